"""Every chapter runs end to end in the paper profile, on a CPU with no network (see
``paper_dry_run.py`` for what is faked and what is capped), and the paper profile's largest
dataset fits in a small machine's memory."""

from __future__ import annotations

import paper_dry_run as dry
import pytest

# the training split each chapter's paper-profile fits see, at full size (10 % is validation)
FULL_TRAIN = {"01_linear_probing": 54_000, "02_visual_prompting": 54_000,
              "03_visual_prompt_tuning": 45_000, "04_multiscale_visual_prompting": 45_000,
              "05_instance_visual_prompting": 45_000, "06_activation_prompts": 54_000}


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return dry.write_downloads(tmp_path_factory.mktemp("downloads"))


def test_fit_on_all_of_cifar100_at_224_px_needs_under_4_gb(downloads):
    row = dry.data_path_peak(downloads)
    assert row["n_train"] == 45_000 and row["image_shape"] == [3, 224, 224], row
    assert row["stored_mb"] < 200, row  # native 32 px uint8, not 9 GB at 224 px
    assert row["peak_rss_mb"] < 4096, row


@pytest.mark.parametrize("chapter", dry.CHAPTERS)
def test_chapter_runs_in_the_paper_profile(chapter, downloads, tmp_path):
    row = dry.run_chapter(chapter, downloads, tmp_path)
    sizes = {fit["n_train"] for fit in row["fits"]}
    if chapter in FULL_TRAIN:  # the chapter trained on the paper's full training split
        assert FULL_TRAIN[chapter] in sizes, (chapter, sorted(sizes))
    assert all(fit["flops"] > 0 for fit in row["fits"]), row["fits"]
