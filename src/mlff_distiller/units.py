"""Unit conversions. Internal units are ASE's: Å, eV, eV/Å, fs, amu.

Multiply a value in the named unit by the constant to get internal units, e.g.
``energy_ev = energy_kcal_per_mol * KCAL_PER_MOL``; divide to convert back.
Constants come from :mod:`ase.units` (CODATA 2014) so they match every ASE-based tool.
"""

from ase import units as _u

# energy -> eV
EV = 1.0
KCAL_PER_MOL = _u.kcal / _u.mol  # 0.0433641 eV
KJ_PER_MOL = _u.kJ / _u.mol  # 0.0103643 eV
HARTREE = _u.Hartree  # 27.2114 eV
MEV = 1e-3

# length -> Å
ANGSTROM = 1.0
NM = 10.0
BOHR = _u.Bohr  # 0.529177 Å

# time -> fs
FS = 1.0
PS = 1000.0

# mass: amu is internal
AMU = 1.0

# derived
KCAL_PER_MOL_PER_ANGSTROM = KCAL_PER_MOL / ANGSTROM
KJ_PER_MOL_PER_NM = KJ_PER_MOL / NM
HARTREE_PER_BOHR = HARTREE / BOHR

BOLTZMANN = _u.kB  # eV / K

# ASE's own time unit is sqrt(amu Å^2 / eV); one fs is this many ASE time units.
ASE_TIME_PER_FS = _u.fs

# derived: masses in amu, velocities in Å/fs
MASS_VELOCITY2_TO_EV = 1.0 / ASE_TIME_PER_FS**2  # 1 amu Å^2/fs^2 = 103.64 eV
ACCEL_PER_FORCE_OVER_MASS = ASE_TIME_PER_FS**2  # (eV/Å)/amu -> Å/fs^2
NM_PER_PS = NM / PS  # a velocity of 1 nm/ps in Å/fs (0.01)
MEV_PER_EV = 1.0 / MEV  # 1000: eV -> meV for reports

UNITS_ATTRS = {
    "length": "Angstrom",
    "energy": "eV",
    "forces": "eV/Angstrom",
    "stress": "eV/Angstrom^3",
    "time": "fs",
    "mass": "amu",
    "velocities": "Angstrom/fs",
}


def energy_to_ev(value, unit: str):
    """Convert an energy from ``unit`` (eV, meV, kcal/mol, kJ/mol, Hartree) to eV."""
    return value * _ENERGY[_norm(unit)]


def energy_from_ev(value, unit: str):
    """Convert an energy in eV to ``unit``."""
    return value / _ENERGY[_norm(unit)]


def length_to_angstrom(value, unit: str):
    """Convert a length from ``unit`` (Å, nm, Bohr) to Å."""
    return value * _LENGTH[_norm(unit)]


def _norm(unit: str) -> str:
    return unit.strip().lower().replace(" ", "").replace("å", "a")


_ENERGY = {
    "ev": EV,
    "mev": MEV,
    "kcal/mol": KCAL_PER_MOL,
    "kj/mol": KJ_PER_MOL,
    "hartree": HARTREE,
    "ha": HARTREE,
}
_LENGTH = {"a": ANGSTROM, "angstrom": ANGSTROM, "nm": NM, "bohr": BOHR}


def velocities_ase_to_internal(v_ase):
    """ASE velocities (Å per ASE time unit) -> Å/fs."""
    return v_ase * _u.fs


def velocities_internal_to_ase(v_a_per_fs):
    """Å/fs -> ASE velocities (Å per ASE time unit), as ``Atoms.set_velocities`` expects."""
    return v_a_per_fs / _u.fs
