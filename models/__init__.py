"""World models, their data and canvases. Imports nothing from `harness` or `robot`."""


def __getattr__(name: str):
    """`models.load_promoted(...)` without importing torch for everyone who imports `models`."""
    if name == "load_promoted":
        from models.promoted import load_promoted

        return load_promoted
    raise AttributeError(f"module 'models' has no attribute {name!r}")
