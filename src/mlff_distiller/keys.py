"""Property names used everywhere: batches, model outputs, HDF5 datasets, calculators.

One module so that no string literal for a property is spelled two ways.
"""

# structure
ATOMIC_NUMBERS = "atomic_numbers"
POSITIONS = "positions"
CELL = "cell"
PBC = "pbc"
N_ATOMS = "n_atoms"
SYSTEM_IDX = "system_idx"
MASSES = "masses"
VELOCITIES = "velocities"
MOLECULE_ID = "molecule_id"
NAME = "name"
SMILES = "smiles"

# labels / outputs
ENERGY = "energy"
FREE_ENERGY = "free_energy"
FORCES = "forces"
STRESS = "stress"
# a few rows of the Hessian d2E/dx_i dx (eV/Å^2) per structure (Hessian-informed distillation):
# HESSIAN_INDEX (n_systems, r) int64, which rows: flat coordinate i = 3 * atom + axis of the
# structure's own atoms, -1 = no row (padding); HESSIAN_ROWS (n_atoms, r, 3): for atom a of
# structure s, HESSIAN_ROWS[a, k] = d2E / dx_i dx_a (x_a the 3 coordinates of atom a), i.e.
# the row i of the structure's (3N, 3N) Hessian laid out per atom; zeros where the index is -1
HESSIAN_INDEX = "hessian_index"
HESSIAN_ROWS = "hessian_rows"
# uncertainty of a committee (models.committee): per-member forces (n_members, n_atoms, 3) eV/Å,
# per-atom force uncertainty (n_atoms,) eV/Å = RMS over members of |F_m - F_mean|, and the
# per-structure uncertainty (n_systems,) eV/Å = the largest per-atom value of the structure
MEMBER_FORCES = "member_forces"
MEMBER_ENERGIES = "member_energies"
FORCE_UNCERTAINTY = "force_uncertainty"
STRUCTURE_UNCERTAINTY = "structure_uncertainty"

# which structures of a force provider a batch holds (n_systems,) int64 (md.forces)
STRUCTURE_ID = "structure_id"

# trajectories
TIME = "time"
KINETIC_ENERGY = "kinetic_energy"
POTENTIAL_ENERGY = "potential_energy"
TEMPERATURE = "temperature"
# root attributes of a trajectory file: when its velocities are taken ("on-step": at the frame's
# time, velocity Verlet / BAOAB / ASE; "half-step": half a step before it, OpenMM's leapfrog
# integrators), and the temperature it was asked for and the mean it reached (K, thermo.temperature)
VELOCITY_CONVENTION = "velocity_convention"
ON_STEP = "on-step"
HALF_STEP = "half-step"
TARGET_TEMPERATURE = "target_temperature_k"
MEASURED_TEMPERATURE = "measured_temperature_k"

# graph
EDGE_INDEX = "edge_index"
EDGE_VECTORS = "edge_vectors"
EDGE_SHIFTS = "edge_shifts"

LABEL_KEYS = (ENERGY, FORCES, STRESS)
