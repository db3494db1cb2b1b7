"""Index commands of the CLI (filled in by the image-index work)."""


def add_index_commands(commands) -> None:
    return None
