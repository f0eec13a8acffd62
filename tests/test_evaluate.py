"""The real `ns-train ilrm-small --data <chunk root>` on CPU (background loader processes), then
`ilrm-eval` over an evaluation index: per-scene and mean metrics as JSON, rendered targets as PNG,
the wide-coverage protocol, and bad data named without a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from ilrm_nerfstudio.data.sources import chunk_entries
from ilrm_nerfstudio.tools.eval import main as ilrm_eval
from tests.test_sources import write_chunk_dataset
from tests.test_training import checkpoint_of, ns_train


@pytest.fixture(scope="module")
def chunk_data(tmp_path_factory):
    root = write_chunk_dataset(tmp_path_factory.mktemp("re10k") / "re10k", num_train=6, num_test=3, num_frames=10)
    keys = [e.name for e in chunk_entries(root, "test")]
    index = root / "evaluation_index.json"
    index.write_text(
        json.dumps(
            {
                keys[0]: {"context": [0, 8], "target": [2, 4, 6]},
                keys[1]: None,  # skipped, as in RE10K's index
                keys[2]: {"context": [1, 9], "target": [3, 5, 7]},
            }
        )
    )
    return root, index, keys


@pytest.fixture(scope="module")
def chunk_run(chunk_data, tmp_path_factory):
    root, _, _ = chunk_data
    output = tmp_path_factory.mktemp("runs")
    result = ns_train(root, output, "--max-num-iterations", "3", "--steps-per-save", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "training data: 6 scene(s)" in result.stdout and "(chunks)" in result.stdout
    return output / "test" / "ilrm-small" / "run"


def test_ns_train_on_torch_chunks(chunk_run):
    state = torch.load(checkpoint_of(chunk_run), map_location="cpu", weights_only=True)
    assert state["step"] == 2
    config = (chunk_run / "config.yml").read_text()
    assert "num_workers: 2" in config  # frames were decoded in background processes


def test_ilrm_eval_with_an_index_writes_per_scene_and_mean_json(chunk_run, chunk_data, tmp_path, capsys):
    root, index, keys = chunk_data
    output, renders = tmp_path / "results.json", tmp_path / "renders"
    code = ilrm_eval(
        [
            "--load-config",
            str(chunk_run / "config.yml"),
            "--index",
            str(index),
            "--output",
            str(output),
            "--render-dir",
            str(renders),
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads(output.read_text())
    assert results["protocol"] == "index" and results["source"] == "chunks"
    per_scene = results["per_scene"]
    assert [row["scene"] for row in per_scene] == [keys[0], keys[2]]
    assert per_scene[0]["context"] == [0, 8] and per_scene[0]["target"] == [2, 4, 6]
    for name in ("psnr", "ssim"):
        values = [row[name] for row in per_scene]
        assert results["results"][name] == pytest.approx(sum(values) / len(values))
    assert results["results"]["num_scenes"] == 2
    assert ("lpips" in results["results"]) == (results["lpips"] == "computed")
    pngs = sorted(p.relative_to(renders).as_posix() for p in renders.rglob("*.png"))
    assert len(pngs) == 2 * 3 * 2 and f"{keys[0]}/frame_00002.png" in pngs and f"{keys[2]}/frame_00007_gt.png" in pngs


def test_ilrm_eval_wide_protocol(chunk_run, tmp_path, capsys):
    output = tmp_path / "wide.json"
    code = ilrm_eval(
        [
            "--load-config",
            str(chunk_run / "config.yml"),
            "--protocol",
            "wide",
            "--context-views",
            "3",
            "--output",
            str(output),
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads(output.read_text())
    assert results["protocol"] == "wide" and results["results"]["num_scenes"] == 3
    for row in results["per_scene"]:
        assert row["target"] == [0, 8] and len(row["context"]) == 3 and not {0, 8} & set(row["context"])


def test_ilrm_eval_names_the_scene_and_the_problem(chunk_run, chunk_data, tmp_path, capsys):
    _, _, keys = chunk_data
    index = tmp_path / "bad_index.json"
    index.write_text(json.dumps({keys[0]: {"context": [0, 8], "target": [99]}}))
    code = ilrm_eval(
        ["--load-config", str(chunk_run / "config.yml"), "--index", str(index), "--output", str(tmp_path / "r.json")]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"scene {keys[0]}: the view list asks for frame 99, but the scene has 10 frames" in err
    assert "Traceback" not in err
    code = ilrm_eval(["--load-config", str(chunk_run / "config.yml"), "--data", str(tmp_path / "nowhere")])
    assert code == 2 and "nowhere: data folder not found" in capsys.readouterr().err


def test_ns_train_and_ilrm_eval_on_a_single_colmap_capture(tmp_path, capsys):
    """Source 4, the user's own capture: images + a COLMAP model, every 4th frame held out."""
    from tests.test_sources import frame_images, ground_truth, write_colmap

    c2w, K = ground_truth(24, 36, 48, seed=11)
    capture = write_colmap(tmp_path / "my_capture", c2w, K, frame_images(24, 36, 48), binary=True)
    result = ns_train(
        capture, tmp_path / "runs", "--max-num-iterations", "2", "--pipeline.datamanager.holdout-interval", "4"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "training data: 1 scene(s)" in result.stdout and "(single-scene)" in result.stdout
    run = tmp_path / "runs" / "test" / "ilrm-small" / "run"
    output = tmp_path / "capture.json"
    assert ilrm_eval(["--load-config", str(run / "config.yml"), "--output", str(output)]) == 0, capsys.readouterr().err
    results = json.loads(output.read_text())
    assert results["source"] == "single-scene"
    targets = sorted(t for row in results["per_scene"] for t in row["target"])
    assert targets == [0, 4, 8, 12, 16, 20]  # the held-out frames, 2 per episode
    assert all(not set(row["context"]) & set(targets) for row in results["per_scene"])
