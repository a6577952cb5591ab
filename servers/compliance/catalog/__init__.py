"""The control catalog: frameworks and their controls, shipped as versioned data files."""
