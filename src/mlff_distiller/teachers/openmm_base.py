"""What the OpenMM teachers share: unit conversion at the OpenMM boundary, one cached
``Context`` per molecule for the ASE-calculator path, and a native path (a ``Context`` with
an OpenMM integrator) that reference MD uses for speed.

OpenMM works in nm, ps, kJ/mol; everything leaving this module is in Å, fs, eV.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import keys, units
from mlff_distiller.teachers.base import TeacherCalculator, TeacherError, TeacherInfo

# Up to this many particles the Reference platform is the faster one: it computes in the
# calling thread, where the CPU platform hands every force evaluation to its worker threads and
# waits for them. Measured (GAFF2, no cutoff, one energy+force call / one Langevin step, 2-core
# VM): 12 atoms 0.004 ms against 0.32 ms (CPU platform, 2 threads), 21 atoms 0.007 / 0.32,
# 101 atoms 0.07 / 0.45, 200 atoms 0.23 / 0.50, 392 atoms 0.81 / 0.65 (``benchmarks/teachers.py
# --only-openmm``, README).
REFERENCE_MAX_PARTICLES = 300


def openmm_platform(
    name: str | None = None, threads: int | None = None, n_particles: int | None = None
):
    """The OpenMM platform ``name`` and its properties dict. ``name=None`` picks the faster one
    for a system of ``n_particles``: ``Reference`` up to :data:`REFERENCE_MAX_PARTICLES`, else
    ``CPU`` (``Reference`` where CPU is missing). ``threads``: the CPU platform's threads."""
    import openmm

    names = [
        openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())
    ]
    if name is None:
        small = n_particles is not None and n_particles <= REFERENCE_MAX_PARTICLES
        name = "CPU" if "CPU" in names and not small else "Reference"
    if name not in names:
        raise ValueError(f"OpenMM platform '{name}' is not available here; available: {names}")
    props: dict[str, str] = {}
    if name == "CPU" and threads:
        props["Threads"] = str(int(threads))
    return openmm.Platform.getPlatformByName(name), props


def positions_to_openmm(positions_a: np.ndarray):
    """(n_atoms, 3) Å -> OpenMM Quantity in nm."""
    from openmm import unit

    return unit.Quantity(np.asarray(positions_a, dtype=np.float64) / units.NM, unit.nanometer)


def state_energy_forces(state) -> tuple[float, np.ndarray]:
    """OpenMM State -> (energy eV, forces (n_atoms, 3) eV/Å)."""
    from openmm import unit

    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * units.KJ_PER_MOL
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return float(energy), np.asarray(forces, dtype=np.float64) * units.KJ_PER_MOL_PER_NM


def state_velocities(state) -> np.ndarray:
    """OpenMM State -> velocities (n_atoms, 3) in Å/fs."""
    from openmm import unit

    v = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
    return np.asarray(v, dtype=np.float64) * units.NM_PER_PS


def velocities_to_openmm(velocities_a_per_fs: np.ndarray):
    """(n_atoms, 3) Å/fs -> OpenMM Quantity in nm/ps."""
    from openmm import unit

    v = np.asarray(velocities_a_per_fs, dtype=np.float64) / units.NM_PER_PS
    return unit.Quantity(v, unit.nanometer / unit.picosecond)


def constraint_options(constraints: str | None) -> dict[str, Any]:
    """``createSystem`` keywords for ``constraints`` (None or ``"hbonds"``). Constrained bonds
    keep their force terms (``flexibleConstraints``) so energies match the unconstrained path."""
    from openmm import app

    if constraints is None:
        return {"constraints": None}
    if constraints.lower() != "hbonds":
        raise ValueError(f"unknown constraints '{constraints}': use None or 'hbonds'")
    return {"constraints": app.HBonds, "flexibleConstraints": True}


class OpenMMTeacher(TeacherCalculator):
    """An OpenMM force field as a teacher.

    Subclasses implement :meth:`build_system` (and may override :meth:`molecule_key`). The
    ASE path keeps one Context per molecule (a do-nothing integrator) and only updates the
    positions per call; :meth:`create_context` gives sampling a Context with a real integrator.
    """

    def __init__(
        self, info: TeacherInfo, platform: str | None = None, threads: int | None = None, **kw: Any
    ) -> None:
        super().__init__(info, **kw)
        self.platform_name = platform
        self.threads = threads
        self._contexts: dict[Any, Any] = {}

    # -- to implement --------------------------------------------------------------------
    def build_system(self, atoms: Atoms, constraints: str | None = None):
        """Return ``(openmm.app.Topology, openmm.System)`` for ``atoms`` (atom order kept).
        ``constraints``: None or ``"hbonds"`` (bonds to H rigid; their force terms kept)."""
        raise NotImplementedError

    def molecule_key(self, atoms: Atoms) -> Any:
        """What identifies one parametrized molecule among the structures this teacher sees."""
        return (tuple(int(z) for z in atoms.numbers), atoms.info.get(keys.SMILES))

    # -- ASE path --------------------------------------------------------------------------
    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        context = self._energy_context(atoms)
        context.setPositions(positions_to_openmm(atoms.positions))
        state = context.getState(getEnergy=True, getForces=True)
        return state_energy_forces(state)

    def _energy_context(self, atoms: Atoms):
        import openmm

        key = self.molecule_key(atoms)
        if key not in self._contexts:
            _, system = self.build_system(atoms, constraints=None)
            platform, props = openmm_platform(
                self.platform_name, self.threads, system.getNumParticles()
            )
            integrator = openmm.VerletIntegrator(0.001)  # never stepped
            self._contexts[key] = openmm.Context(system, integrator, platform, props)
        return self._contexts[key]

    # -- native path -----------------------------------------------------------------------
    def create_context(self, atoms: Atoms, integrator, constraints: str | None = None):
        """A fresh OpenMM Context for ``atoms`` driven by ``integrator``, positions set.

        Returns ``(context, system)``. Energies and forces from its states equal the ASE
        path's (constrained bonds keep their force terms: ``flexibleConstraints``)."""
        import openmm

        _, system = self.build_system(atoms, constraints=constraints)
        platform, props = openmm_platform(
            self.platform_name, self.threads, system.getNumParticles()
        )
        context = openmm.Context(system, integrator, platform, props)
        context.setPositions(positions_to_openmm(atoms.positions))
        return context, system

    @staticmethod
    def check_net_charge(system, expected: int, what: str) -> float:
        """Sum of the NonbondedForce charges; :class:`TeacherError` unless it is ``expected``."""
        import openmm
        from openmm import unit

        total = 0.0
        for force in system.getForces():
            if isinstance(force, openmm.NonbondedForce):
                for i in range(force.getNumParticles()):
                    q, _, _ = force.getParticleParameters(i)
                    total += q.value_in_unit(unit.elementary_charge)
        if abs(total - expected) > 1e-4:
            raise TeacherError(
                f"{what}: total charge {total:.6f} e is not the integral net charge {expected}"
            )
        return total
