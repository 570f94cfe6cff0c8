"""Shared test helpers: where the parity fixtures live.

* `COMPACT_FIXTURE` is in the repository (tests/parity/data, written by tools/make_compact_fixture.py): the D1-R50
  fixture's outputs, instances and training losses, so a clean clone always checks the model's numbers.
* `FIXTURE_DIRS` are the full official fixtures under `../shared/fixtures` (or `$FASTINST_FIXTURES`), checked
  where they exist; `SHARED_MISSING` says why they were not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the `parity` helper package, for tools/ as for tests

FIXTURES = Path(os.environ.get("FASTINST_FIXTURES", REPO.parent / "shared" / "fixtures"))
FIXTURE_DIRS = sorted(p for p in FIXTURES.glob("*/") if (p / "reference.npz").is_file()) if FIXTURES.is_dir() else []
SHARED_MISSING = (
    ""
    if FIXTURE_DIRS
    else f"no full official fixtures under {FIXTURES} (set FASTINST_FIXTURES to a folder of them); "
    "only the in-repo compact fixture was checked"
)
COMPACT_FIXTURE = REPO / "tests" / "parity" / "data" / "fastinst_R50_ppm-fpn_x1_576-s0"
PARITY_FIXTURES = [COMPACT_FIXTURE, *FIXTURE_DIRS]

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixture_id(path: Path) -> str:
    return f"compact:{path.name}" if path == COMPACT_FIXTURE else path.name


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory) -> str:
    """A `fastinst-demo` checkpoint with seed-0 random weights (the 80 COCO classes), for the command tests."""
    import fastinst

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("demo") / "demo.pth"
    torch.save({"model": fastinst.build_model("fastinst-demo").state_dict()}, path)
    return str(path)


@pytest.fixture(scope="session")
def _cache_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fastinst_cache")


@pytest.fixture(autouse=True)
def _private_cache(_cache_folder, monkeypatch) -> None:
    """No test writes into the user's ~/.cache/fastinst (labelme's embedded images, downloads): `$FASTINST_CACHE`
    points into the test session's own folder unless a test sets it itself."""
    monkeypatch.setenv("FASTINST_CACHE", str(_cache_folder))


# ---------------------------------------------------------------------------------------------------------------------
# The `slow` marker: `make test` runs everything; `make test-fast` (pytest -m "not slow") leaves out these, which took
# 2.5 s or more each on 2 cores (tests/test_slow_list.py checks that every entry still names a test). A test may also
# carry @pytest.mark.slow itself.
# ---------------------------------------------------------------------------------------------------------------------

SLOW_FILES = (
    "tests/commands/test_seed_commands.py",
    "tests/losses/test_fixture_losses.py",
    "tests/model/test_parity.py",
    "tests/test_export.py",
    "tests/test_export_fixture.py",
    "tests/test_openvino.py",
)
SLOW_TESTS = (
    "tests/commands/test_benchmark.py::test_benchmark_writes_json",
    "tests/commands/test_class_names.py::test_same_names_under_other_ids_give_the_same_ap",
    "tests/commands/test_class_names.py::test_the_training_sets_own_file_with_unused_categories_works_as_classes",
    "tests/commands/test_cli_fixes.py::test_export_overwrite_replaces_it_and_the_exporter_says_nothing",
    "tests/commands/test_cli_fixes.py::test_resume_with_nothing_to_resume_says_so_and_starts_a_new_run",
    "tests/commands/test_custom_checkpoint.py::test_eval_export_and_benchmark_take_the_same_checkpoint",
    "tests/commands/test_demo.py::test_demo_command_end_to_end",
    "tests/commands/test_own_data.py::test_epochs_set_the_run_length_and_the_schedule_scales",
    "tests/commands/test_own_data.py::test_training_on_background_images_runs",
    "tests/commands/test_own_data.py::test_unused_categories_are_left_out_and_eval_still_scores",
    "tests/commands/test_predict.py::test_fixture_instances_from_the_cli",
    "tests/commands/test_predict.py::test_onnxruntime_backend_matches_torch",
    "tests/commands/test_predict.py::test_output_folder_holding_the_inputs_never_replaces_one",
    "tests/commands/test_predict.py::test_video_round_trip",
    "tests/commands/test_predict_eval_identity.py::test_images_outside_the_dataset_get_fresh_ids",
    "tests/commands/test_predict_eval_identity.py::test_predict_with_data_takes_the_dataset_ids_and_scores_as_eval_model",
    "tests/commands/test_predict_eval_identity.py::test_predictions_without_data_are_matched_at_eval",
    "tests/commands/test_predict_eval_identity.py::test_yolo_set_through_the_same_path",
    "tests/commands/test_predict_stream.py::test_save_json_memory_is_flat_over_a_long_stream",
    "tests/commands/test_predict_stream.py::test_sigterm_while_the_stream_stalls_finishes_the_video",
    "tests/commands/test_predict_stream.py::test_stream_url_frames_as_they_arrive",
    "tests/commands/test_train_runs.py::test_a_second_run_never_overwrites_the_first",
    "tests/commands/test_train_runs.py::test_a_stop_signal_saves_last_pth_and_resume_continues",
    "tests/commands/test_train_runs.py::test_fine_tuning_says_what_it_transferred_and_refuses_another_variant",
    "tests/engine/test_app_server.py::test_a_38_megapixel_upload_at_threshold_0_stays_under_the_documented_bound",
    "tests/engine/test_app_server.py::test_compact_instances_match_the_predictor",
    "tests/engine/test_app_server.py::test_idle_and_half_sent_connections_hold_no_thread_and_time_out",
    "tests/engine/test_app_server.py::test_twenty_simultaneous_uploads_all_get_answers",
    "tests/engine/test_kill_resume.py::test_sigkill_and_resume_is_bit_identical",
    "tests/engine/test_predictor.py::test_auto_precision_on_every_cpu_kind",
    "tests/engine/test_predictor.py::test_bf16_instances_agree_with_fp32_on_a_photo",
    "tests/engine/test_predictor.py::test_fixture_instances_through_fastinst_load",
    "tests/engine/test_predictor.py::test_ultralytics_names_that_mean_the_same",
    "tests/engine/test_sources_timeout.py::test_the_python_api_takes_stream_urls_with_the_same_timeouts",
    "tests/engine/test_trainer.py::test_stop_and_resume_gives_identical_weights",
    "tests/engine/test_trainer.py::test_two_process_ddp_step_equals_single_process",
    "tests/engine/test_video_memory.py::test_video_streams_frames_and_upsamples_only_passing_masks",
    "tests/model/test_fuse.py::test_fused_equals_unfused",
    "tests/test_app.py::test_cli_serves_until_ctrl_c",
    "tests/test_gpu_benchmark_script.py::test_gpu_benchmark_dry_run",
    "tests/test_packaging.py::test_installed_wheel_works_outside_the_repository",
    "tests/test_reliability_checkpoints.py::test_resume_with_an_architecture_override_is_one_line",
    "tests/test_reliability_options.py::test_warnings_print_as_one_line_without_a_source_excerpt",
)


def pytest_collection_modifyitems(config, items) -> None:
    slow = pytest.mark.slow
    for item in items:
        path = item.nodeid.split("::")[0]
        if path in SLOW_FILES or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(slow)
