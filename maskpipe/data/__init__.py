"""Data layer: scan and index the competition layout (``index``, ``layout``), decode images
strictly (``images``), correct known label errors (``corrections``), split people into train and
validation (``split``), and generate a synthetic stand-in data set (``synth``).

Import the submodules directly; this package imports nothing heavy on its own.
"""
