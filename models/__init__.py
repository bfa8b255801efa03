"""World models, their data and canvases. Imports nothing from `harness` or `robot`."""
