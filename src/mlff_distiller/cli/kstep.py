"""``mlffd kstep dataset | train | refine | run``: learned k-step jumps with a physics corrector."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mlff_distiller.cli._common import console, user_errors

kstep_app = typer.Typer(
    help="k-step hybrid MD: windows from teacher trajectories, jump networks, hybrid runs.",
    no_args_is_help=True,
)


@kstep_app.command("dataset")
def dataset_command(
    trajectories: list[Path] = typer.Argument(..., help="HDF5 trajectories from `mlffd sample`"),
    out: Path = typer.Option(..., "--out", help="window file to write (HDF5)"),
    k: list[int] = typer.Option([8], "--k", help="jump length(s) in MD steps; repeat for several"),
    stride: int = typer.Option(1, help="frames between window starts"),
    dt: float = typer.Option(0.0, help="MD time step in fs (0: read from the trajectory)"),
    train_fraction: float = typer.Option(0.7, help="fraction of molecules for training"),
    val_fraction: float = typer.Option(0.15, help="fraction of molecules for validation"),
    test_molecule: list[str] = typer.Option([], help="force a molecule (by name) into test"),
    seed: int = typer.Option(0, help="seed of the molecule split"),
    on_step: bool = typer.Option(
        True,
        "--on-step/--as-stored",
        help="move half-step (leapfrog, OpenMM) velocities to the frame times, as the hybrid "
        "integrator uses them",
    ),
    velocity_convention: str = typer.Option(
        "auto",
        "--velocity-convention",
        help="what the trajectories store: auto (each file's velocity_convention attribute), "
        "on-step or half-step (for files that do not record it)",
    ),
    rollout: bool = typer.Option(
        False, help="also the next hybrid cycle's frames (rollout loss); needs every-step frames"
    ),
) -> None:
    """Build (x_t, v_t) -> (x_t+k, v_t+k) windows, split by molecule."""
    from mlff_distiller.kstep.dataset import build_windows

    with user_errors():
        test_fraction = 1.0 - train_fraction - val_fraction
        if test_fraction < -1e-9:
            raise ValueError(
                f"--train-fraction {train_fraction} and --val-fraction {val_fraction} add up to "
                "more than 1"
            )
        test_fraction = max(test_fraction, 0.0)  # 0.9 + 0.1 leaves -3e-17, not an error
        mols = build_windows(
            trajectories,
            out,
            ks=k,
            stride=stride,
            dt=dt or None,
            fractions=(train_fraction, val_fraction, test_fraction),
            seed=seed,
            test_molecules=test_molecule,
            on_step_velocities=on_step,
            velocity_convention=velocity_convention,
            rollout=rollout,
        )
    for mol in mols.values():
        console.print(f"{mol.name:24s} {mol.split:5s} {mol.n_windows:7d} windows")
    console.print(f"wrote {out}")


@kstep_app.command("train")
def train_command(
    windows: Path = typer.Argument(..., help="window file from `mlffd kstep dataset`"),
    out: Path = typer.Option(Path("runs/kstep"), "--out", help="output directory"),
    architecture: str = typer.Option("egnn", help="egnn or transformer_egnn"),
    hidden: int = typer.Option(64, help="hidden scalar features"),
    layers: int = typer.Option(4, help="message-passing layers"),
    cutoff: float = typer.Option(7.0, help="graph cutoff, Å (0.7 nm in the design documents)"),
    max_delta_x: float = typer.Option(2.5, help="bound of |delta x|, Å (QM: 0.1)"),
    max_delta_v: float = typer.Option(0.2, help="bound of |delta v|, Å/fs"),
    k: list[int] = typer.Option([], "--k", help="train only on these k (default: all)"),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(1e-3, help="peak learning rate (AdamW)"),
    warmup_steps: int = typer.Option(50),
    accumulate: int = typer.Option(1, help="gradient accumulation steps"),
    grad_clip: float = typer.Option(1.0),
    augment: bool = typer.Option(True, help="random rotations of training windows"),
    reverse_time: float = typer.Option(
        0.0, help="probability of serving a training window time-reversed (0: never)"
    ),
    precision: str = typer.Option("auto", help="auto (bf16 on GPU), 32 or bf16"),
    device: str = typer.Option("auto"),
    init_from: str = typer.Option(
        None,
        help="k-step model folder to fine-tune, or pretrained:CORRECTOR for the shipped network "
        "(pretrained:xtb, pretrained:openmm-gaff2): MM -> QM transfer, or a new molecule",
    ),
    freeze_layers: int = typer.Option(0, help="with --init-from: freeze the first N layers"),
    structural_weight: float = typer.Option(1.0, help="weight of the bond-length loss"),
    kinetic_weight: float = typer.Option(
        0.0, help="weight of the per-molecule kinetic-energy loss (trains heating away)"
    ),
    element_kinetic_weight: float = typer.Option(
        0.0, help="weight of the per-(molecule, element) kinetic-energy loss (equipartition)"
    ),
    energy_weight: float = typer.Option(
        0.0, help="weight of the first-order total-energy error loss (needs forces)"
    ),
    rollout_weight: float = typer.Option(
        0.0, help="weight of the two-cycle rollout loss (needs a file built with --rollout)"
    ),
    noise_positions: float = typer.Option(0.0, help="Gaussian noise on x_t in training, Å"),
    noise_velocities: float = typer.Option(
        0.0, help="Gaussian noise on v_t in training, Å/fs for H (x sqrt(m_H/m))"
    ),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint"),
    seed: int = typer.Option(0),
) -> None:
    """Train an EGNN / Transformer-EGNN jump network."""
    from mlff_distiller.kstep.dataset import KStepWindows
    from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep

    with user_errors():
        config = KStepTrainConfig(
            out_dir=str(out),
            architecture=architecture,
            model={
                "hidden": hidden,
                "n_layers": layers,
                "cutoff": cutoff,
                "max_delta_x": max_delta_x,
                "max_delta_v": max_delta_v,
            },
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=warmup_steps,
            accumulate=accumulate,
            grad_clip=grad_clip,
            precision=precision,
            device=device,
            seed=seed,
            loss={
                "bond": structural_weight,
                "kinetic": kinetic_weight,
                "element_kinetic": element_kinetic_weight,
                "energy": energy_weight,
                "rollout": rollout_weight,
            },
            noise_positions=noise_positions,
            noise_velocities=noise_velocities,
            init_from=_model_folder(init_from) if init_from else None,
            freeze_layers=freeze_layers,
        )
        ks = k or None
        rollout = rollout_weight > 0
        train = KStepWindows.from_file(windows, "train", augment_rotations=augment, ks=ks,
                                       reverse_time=reverse_time, rollout=rollout)  # fmt: skip
        val = KStepWindows.from_file(windows, "val", ks=ks, rollout=rollout)
        console.print(f"{len(train)} training and {len(val)} validation windows")
        result = train_kstep(config, train, val, resume=resume, progress=True)
    last = result.history[-1]
    console.print(
        f"epochs {result.epochs_done}: train loss {last['train_loss']:.4g}, best monitored "
        f"loss {result.best_val_loss:.4g}; model in {result.best_model}"
    )


@kstep_app.command("refine")
def refine_command(
    model: str = typer.Argument(
        "pretrained:xtb", help="k-step model folder, or pretrained:CORRECTOR for a shipped one"
    ),
    smiles: list[str] = typer.Option(..., "--smiles", help="molecule(s) to refine on; repeat"),
    corrector: str = typer.Option("xtb", help="the corrector the hybrid will run with"),
    out: Path = typer.Option(Path("runs/kstep_refine"), "--out", help="output directory"),
    rounds: int = typer.Option(1, help="DAgger rounds (each aggregates the earlier windows)"),
    replicas: int = typer.Option(8, help="replicas of plain MD and of the hybrid per molecule"),
    cycles: int = typer.Option(240, help="hybrid cycles per molecule and round"),
    every: int = typer.Option(5, help="cycles between labelled states"),
    k: int = typer.Option(8, help="k of the hybrid runs that visit the states"),
    dt: float = typer.Option(0.5, help="MD time step, fs"),
    temperature: float = typer.Option(300.0, help="K"),
    epochs: int = typer.Option(2),
    lr: float = typer.Option(5e-4),
    threads: int = typer.Option(1, help="torch threads"),
    seed: int = typer.Option(0),
) -> None:
    """Fine-tune a jump network on the states its own hybrid visits (DAgger), labelled with the
    corrector's exact flow: half plain-MD, half hybrid states per molecule. Measured on the
    held-out molecules (README): 2-3x lower raw jump energy error; under xTB it removed the
    fallbacks of methoxyethanol. Prints the refined model's folder (for `mlffd kstep run`)."""
    import torch

    from mlff_distiller.kstep.onpolicy import RefineConfig, refine

    torch.set_num_threads(threads)
    with user_errors():
        config = RefineConfig(
            corrector=corrector, rounds=rounds, replicas=replicas, cycles=cycles, every=every,
            k=k, dt_fs=dt, temperature_k=temperature, epochs=epochs, lr=lr, seed=seed,
        )  # fmt: skip
        molecules = {f"molecule_{i}": s for i, s in enumerate(smiles)}
        best = refine(_model_folder(model), molecules, out, config)
    console.print(f"refined jump network: {best} (mlffd kstep run {best} --corrector {corrector})")


@kstep_app.command("run")
def run_command(
    model: Path = typer.Argument(
        None, help="k-step model directory (default: the network shipped for the corrector)"
    ),
    out: Path = typer.Option(
        Path("kstep_run.h5"), "--out", help="HDF5 trajectory to write (its summary: .json beside)"
    ),
    smiles: str = typer.Option(None, help="molecule as SMILES (3D structure built by RDKit)"),
    structure: Path = typer.Option(None, help="or a structure file / trajectory (.h5)"),
    frame: int = typer.Option(-1, help="frame of a structure file to start from"),
    corrector: str = typer.Option(
        "openmm-gaff2", help="openmm-gaff2, openmm-amber14, xtb, student or another teacher"
    ),
    student_model: Path = typer.Option(None, help="PaiNN student for --corrector student"),
    ensemble: str = typer.Option("nvt", help="nvt (Langevin around the cycle) or nve"),
    temperature: float = typer.Option(300.0, help="bath and start temperature, K"),
    friction: float = typer.Option(1.0, help="NVT friction, 1/ps (keep <= 2)"),
    rescale: bool = typer.Option(True, help="NVE: restore the total energy after each cycle"),
    k: int = typer.Option(8, help="MD steps per jump"),
    dt: float = typer.Option(0.5, help="MD time step, fs"),
    cycles: int = typer.Option(200, help="hybrid cycles (k + 1 steps each)"),
    replicas: int = typer.Option(1, help="independent replicas, run as one batch"),
    fallback: str = typer.Option("physics", help="after the last retry: physics or stop"),
    max_attempts: int = typer.Option(3, help="jump attempts (scales 1, 0.8, 0.64, ...)"),
    energy_tol: float = typer.Option(
        0.05, help="integration-error check per cycle, eV/atom (0: off); a safety net"
    ),
    save_every: int = typer.Option(1, help="cycles between saved frames"),
    compare: bool = typer.Option(
        False, help="also run reference MD (2x the replicas) and compare the distributions"
    ),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, help="torch threads (1 is fastest for small molecules)"),
    compile_network: bool = typer.Option(
        None, "--compile/--no-compile",
        help="torch.compile the jump network (default: from 20,000 cycles on, where its 12-40 s "
        "of compilation pay: 2.2 against 4.0 ms per jump for 8 small molecules)",
    ),
    overwrite: bool = typer.Option(False, help="replace an existing --out file"),
    flows: bool = typer.Option(
        False, help="print each element's kinetic-energy change per stage of the cycle "
        "(thermostat, jump, corrector, restoring): which stage heats or cools which element"
    ),
    equilibrate: bool = typer.Option(
        True,
        help="first equilibrate the start structure with plain corrector MD until it reaches "
        "--temperature (checked as `mlffd sample` checks it); replicas then start from it with "
        "fresh Maxwell-Boltzmann velocities",
    ),
) -> None:
    """Hybrid MD on the batched engine: network jumps over k steps + one engine step with the
    corrector's forces; NVT by default. Prints the run summary (force calls, rejections by
    reason, measured temperature) and writes it next to the trajectory (.json)."""
    import torch

    from mlff_distiller.kstep.topology import molecule_topology
    from mlff_distiller.md.forces import make_force_provider
    from mlff_distiller.md.hybrid import HybridConfig, IntegrationError, run_hybrid
    from mlff_distiller.models.io import load_model

    torch.set_num_threads(threads)
    with user_errors():
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists: give another --out or pass --overwrite")
        atoms = _start_structure(smiles, structure, frame, seed)
        if model is None:
            from mlff_distiller.kstep.pretrained import check_range, pretrained_path

            model = pretrained_path(corrector)
            console.print(f"jump network: the pretrained one for {corrector} ({model.name})")
            warning = check_range(k, dt)
            if warning:
                console.print(f"[yellow]{warning}[/]")
        net = load_model(model)
        options = {"model": str(student_model)} if corrector == "student" else {}
        config = HybridConfig(
            k=k, dt_fs=dt, ensemble=ensemble, temperature_k=temperature,
            friction_per_ps=friction, rescale=rescale, fallback=fallback,
            max_attempts=max_attempts, energy_tol_per_atom=energy_tol if energy_tol > 0 else None,
            save_every=save_every, seed=seed, record_flows=flows, compile=compile_network,
        )  # fmt: skip
        if ensemble == "nvt" and friction > 2.0:
            console.print(f"[yellow]friction {friction}/ps: above 2/ps a thermostat hides a "
                          "heating network[/]")  # fmt: skip
        name = str(atoms.info.get("name") or atoms.get_chemical_formula())
        topo = molecule_topology(name, atoms.numbers, atoms.positions, smiles)
        record = None
        if equilibrate:
            atoms, record = _equilibrated(atoms, corrector, options, smiles, temperature, dt,
                                          friction, seed, name)  # fmt: skip
        structures = [atoms.copy() for _ in range(replicas)]

        def provider(structs):
            return make_force_provider(corrector, structs, **dict(options))

        try:
            result = run_hybrid(net, provider(structures), structures, config, cycles,
                                [topo] * replicas, out=out, provider_name=corrector)  # fmt: skip
        except IntegrationError as err:
            console.print(f"[red]{err}[/]")
            result = err.result
        summary = result.summary()
        summary["target_temperature_k"] = temperature if ensemble == "nvt" else None
        summary["equilibration"] = record
        _print_summary(summary, config)
        if compare:
            from mlff_distiller.evaluation.kstep_eval import compare_hybrid_to_reference

            cmp = compare_hybrid_to_reference(net, provider, atoms, topo, config, cycles,
                                              replicas=max(replicas, 2), molecule=name,
                                              corrector=corrector)  # fmt: skip
            summary["comparison"] = cmp.to_dict()
            if cmp.distributions is not None:
                console.print(cmp.distributions.table())
            console.print(f"force calls reference/hybrid {cmp.force_call_ratio:.2f}, "
                          f"wall-clock speed-up {cmp.speedup:.2f}")  # fmt: skip
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=float))
        console.print(f"wrote {out} and {out.with_suffix('.json')}")


def _print_summary(summary: dict, config) -> None:
    from rich.table import Table

    table = Table(title=f"k-step hybrid, k = {config.k}, {config.ensemble.upper()}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    target = summary.get("target_temperature_k")
    measured = f"{summary['mean_temperature_k']:.1f} K"
    rows = [
        ("structures x cycles", f"{summary['structures']} x {summary['cycles']}"),
        ("MD steps per structure", str(summary["md_steps_per_structure"])),
        ("force calls (structure-calls)", str(summary["force_calls"])),
        ("MD steps per force call", f"{summary['steps_per_force_call']:.2f}"),
        ("mean temperature", measured + (f" (bath {target:.0f} K)" if target else "")),
        ("per element", ", ".join(f"{el} {t:.0f} K" for el, t in
                                  summary["element_temperatures_k"].items())),
        ("retries / fallbacks", f"{summary['retries']} / {summary['fallbacks']}"),
        ("rejections", ", ".join(f"{k} {v}" for k, v in summary["rejections"].items() if v)
         or "none"),
        ("raw energy error per cycle (median, eV/atom)",
         f"{summary['raw_energy_error_ev_per_atom']['median']:.2e}"),
        ("network / corrector ms per call",
         f"{summary['network_ms_per_call']:.2f} / {summary['corrector_ms_per_call']:.2f}"),
        ("wall clock", f"{summary['wall_seconds']:.1f} s"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)
    flows = summary.get("kinetic_energy_flow_mev_per_atom_cycle")
    if flows:
        elements = list(next(iter(flows.values())))
        ftable = Table(title="kinetic-energy change per atom and cycle, meV (accepted cycles)")
        ftable.add_column("stage")
        for el in elements:
            ftable.add_column(el, justify="right")
        for stage, per_el in [*flows.items(), ("sum", None)]:
            values = per_el or {el: sum(f[el] for f in flows.values()) for el in elements}
            ftable.add_row(stage, *(f"{values[el]:+.3f}" for el in elements))
        console.print(ftable)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning: {warning}[/]")


def _model_folder(name: str) -> str:
    """A model folder, or ``pretrained:NAME``: a shipped network (family or corrector name)."""
    if name.startswith("pretrained:"):
        from mlff_distiller.kstep.pretrained import shipped_network

        return str(shipped_network(name.split(":", 1)[1]))
    return name


def _equilibrated(atoms, corrector, options, smiles, temperature, dt, friction, seed, name):
    """The start structure after plain corrector MD reached ``temperature``
    (:func:`mlff_distiller.teachers.sampling.equilibrated_structure`), and its record."""
    from mlff_distiller.md.forces import OPENMM_TEACHERS
    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.sampling import SamplingConfig, equilibrated_structure

    if corrector == "student":
        import torch

        from mlff_distiller.md.calculator import StudentCalculator

        engine_calc = StudentCalculator(options["model"], dtype=torch.float64)
    else:
        extra = {"smiles": smiles} if corrector == "openmm-gaff2" and smiles else {}
        engine_calc = get_teacher(corrector, **extra)
    cfg = SamplingConfig(temperature_k=temperature, dt_fs=dt, friction_per_ps=friction,
                         constraints="none", seed=seed)  # fmt: skip
    kind = "mm" if corrector in OPENMM_TEACHERS else "qm"
    out, record = equilibrated_structure(engine_calc, atoms, cfg, kind, name)
    out.info.update(atoms.info)
    state = "reached" if record["passed"] else "[yellow]did not reach[/]"
    console.print(
        f"equilibrated with plain {corrector} MD: {record['time_fs']:.0f} fs at "
        f"{record['friction_per_ps']:g}/ps, {state} {temperature:g} K (mean over the last "
        f"{record['window_fs']:g} fs {record['window_mean_k']:.0f} K, tolerance "
        f"{record['tolerance_k']:.0f} K)"
    )
    return out, record


def _start_structure(smiles, structure, frame, seed):
    """The start structure, without velocities (each replica draws Maxwell-Boltzmann ones)."""
    import numpy as np

    if (smiles is None) == (structure is None):
        raise ValueError("give exactly one of --smiles or --structure")
    if smiles is not None:
        from mlff_distiller.data.structures import from_smiles

        atoms = from_smiles(smiles, seed=seed)[0]
        atoms.info["smiles"] = smiles
    elif structure.suffix == ".h5":
        from mlff_distiller.data.hdf5 import Dataset

        with Dataset(structure) as ds:
            atoms = ds[frame if frame >= 0 else len(ds) + frame]
    else:
        from mlff_distiller.data.structures import read_structures

        atoms = read_structures(structure, index=frame)[0]
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    return atoms


def register(app: typer.Typer) -> None:
    app.add_typer(kstep_app, name="kstep")
