"""What the app changes in Gradio's serving path, and why: work Gradio does on its one event loop for every
request or every new visitor, which a server with many users pays for in throughput (found with py-spy).

Both are applied by `build_app`; each has a test that fails if Gradio stops honouring it."""

from __future__ import annotations

import os

from gradio import state_holder


def quiet_request_bookkeeping() -> None:
    """Refresh Gradio's monitoring summary every 100 events over the last 1,000 (a deployment's own settings win).

    After every request Gradio rebuilds a pandas summary of the last 10,000 events for its monitoring page, on
    the event loop that serves every user: a cost that grows with the server's age. Read when the queue is made.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")


class SessionWithLazyConfigs(state_holder.SessionState):
    """Gradio's per-visitor state, describing a component only when this session changes it or asks for all.

    Gradio's own SessionState describes every component of the app (about 200 here, 20 ms) when a visitor's
    first request arrives, on the event loop, so that a deep link could save them; this app has no deep-link
    button, and a session that changes a component has it described then, as before. The deep-link route
    still gets every component: `components` describes the rest when it is read.
    """

    def __init__(self, blocks):
        self._described_ids = list(blocks.blocks)
        super().__init__(_WithoutBlocksToDescribe(blocks))

    @property
    def components(self):
        for block_id in self._described_ids:
            if block_id not in self.config_values and block_id in self.blocks_config.blocks:
                self.config_values[block_id] = self.blocks_config.config_for_block(
                    block_id, [], self.blocks_config.blocks[block_id])
        return super().components


class _WithoutBlocksToDescribe:
    """What SessionState.__init__ reads of a Blocks (its default config, and which blocks to describe: none)."""

    def __init__(self, blocks):
        self.default_config = blocks.default_config
        self.blocks = {}


def describe_components_lazily() -> None:
    """New sessions (one per visitor and per gradio_client) describe components only when needed."""
    state_holder.SessionState = SessionWithLazyConfigs
