"""SigLIP 2 Studio's browser UI (Gradio). It only calls the engine and draws its results."""

from .ui import build_app

__all__ = ["build_app"]
