"""The demo pipeline end to end with a reduced config (real xTB teacher MD, real training,
real student MD); its report files exist and its numbers are sane."""

import json

import pytest

from mlff_distiller.evaluation.demo import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(
        smiles=["CCO"], names=["ethanol"], teacher="xtb", temperature_k=400.0,
        equilibration_fs=50.0, sample_fs=150.0, save_every=2, train_minutes=0.35,
        max_epochs=60, size="fast", md_fs=50.0, out=str(out),
        progress_bar=False, kstep_cycles=12, kstep_replicas=2,
    )
    return out, run_demo(cfg, say=lambda msg: None)


def test_demo_writes_its_files(demo_report):
    out, _ = demo_report
    for name in ("report.md", "report.json", "training_curve.png", "eval/metrics.json",
                 "eval/parity_energy.png", "eval/parity_forces.png", "student_md/md_energy.png",
                 "student_md/ethanol.extxyz", "train/model/model.safetensors",
                 "train/model/config.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    assert "force MAE" in text and "ms/call" in text and "nan" not in text.lower()
    assert json.loads((out / "report.json").read_text())["frames"]["ethanol"]["test"] > 0


def test_demo_numbers_are_sane(demo_report):
    _, report = demo_report
    held_out = report["evaluation"]["student_vs_labels"]["overall"]
    live = report["evaluation"]["student_vs_teacher"]["overall"]
    # the student learnt something: well below the spread of the teacher's forces
    assert held_out["force_mae_mev_per_a"] < 0.6 * held_out["force_std_mev_per_a"]
    assert held_out["force_cosine"] > 0.6
    # the held-out labels are the teacher's: scoring against the teacher run live agrees
    assert live["force_mae_mev_per_a"] == pytest.approx(held_out["force_mae_mev_per_a"], rel=0.2)
    timing = report["evaluation"]["timing"]
    assert timing["student_ms_per_call"] > 0 and timing["teacher_ms_per_call"] > 0
    md = report["student_md"]["ethanol"]
    assert md["steps"] == 100
    assert 50.0 < md["mean_temperature_k"] < 1000.0
    # NVE with a smooth student: total energy drifts far less than the kinetic energy scale
    assert abs(md["energy_drift_mev_per_atom_per_ps"]) < 20.0


def test_demo_kstep_stage_runs_the_shipped_network_against_plain_md(demo_report):
    out, report = demo_report
    ks = report["kstep"]
    assert "skipped" not in ks, ks
    assert ks["k"] == 8 and ks["ensemble"] == "nvt" and ks["replicas"] == 2
    assert ks["hybrid"]["cycles"] == 12 and ks["reference"]["structures"] == 4
    # the reference runs one step per force call; the hybrid at most 9 per call
    assert ks["reference"]["steps_per_force_call"] == pytest.approx(1.0, rel=0.02)
    assert 0.5 < ks["force_call_ratio"] <= 9.0
    assert 50.0 < ks["hybrid"]["mean_temperature_k"] < 1500.0
    assert (out / "kstep" / "kstep_distributions.png").stat().st_size > 0
    assert "k-step hybrid MD" in (out / "report.md").read_text()
    # the shipped network was fine-tuned on k = 8 windows of the demo's own teacher MD
    # (150 fs at 0.5 fs, a frame every 2 steps: 151 frames; k = 8 spans 4 of them)
    assert ks["finetune"]["epochs"] == 3 and ks["finetune"]["windows"] == 147
    assert "fine-tuned 3 epochs" in (out / "report.md").read_text()


def test_eval_cli_reproduces_the_demo_numbers(demo_report):
    from typer.testing import CliRunner

    from mlff_distiller.cli.main import app

    out, report = demo_report
    result = CliRunner().invoke(
        app, ["eval", str(out / "train" / "model"), str(out / "test.h5"), "--out", str(out / "e2")]
    )
    assert result.exit_code == 0, result.output
    again = json.loads((out / "e2" / "metrics.json").read_text())["student_vs_labels"]
    first = report["evaluation"]["student_vs_labels"]
    assert again["overall"]["force_mae_mev_per_a"] == pytest.approx(
        first["overall"]["force_mae_mev_per_a"], rel=1e-6
    )
    assert set(again["per_element"]) == {"H", "C", "O"}
    assert (out / "e2" / "parity_forces.png").is_file()
    bad = CliRunner().invoke(app, ["eval", str(out / "train" / "model"), str(out / "nope.h5")])
    assert bad.exit_code == 1 and "nope.h5" in bad.output
