"""Lab data in and results out: ``ulm import`` and ``ulm export``.

:mod:`ulmtools.io.sources` reads MATLAB (v5 and v7.3), HDF5 and NumPy files
lazily, in blocks of frames; :mod:`ulmtools.io.lab` turns the parameter structs
of PALA and Verasonics scripts into a grid or an acquisition;
:mod:`ulmtools.io.importer` writes the store; :mod:`ulmtools.io.export` writes
pictures, TIFF, NIfTI, .mat and .npy files from a store.
"""
