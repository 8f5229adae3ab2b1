"""mlff_distiller: distil fast PaiNN students from slow teachers and run fast molecular dynamics.

Internal units are ASE's: Å, eV, eV/Å, fs, amu. Conversions happen only at library boundaries
(see :mod:`mlff_distiller.units`).
"""

__version__ = "0.1.0"
