"""The public namespace of conveyor.train, pinned."""

import conveyor.train


def test_export_list():
    assert conveyor.train.__all__ == [
        "SCHEDULES", "Action", "Candidate", "Interval", "LayerProfile", "MissingTorchError",
        "ModelProfile", "Partition", "Plan", "Schedule", "Simulation", "StageCosts",
        "Traced", "TrainError", "TrainReport", "build_schedule", "draw_svg", "gpipe", "interleaved_1f1b",
        "one_f_one_b", "partition_by_params", "partition_optimal", "partition_uniform", "plan",
        "predict", "profile_model", "simulate", "train", "validate", "zb_h1",
    ]  # fmt: skip
    for name in conveyor.train.__all__:
        assert getattr(conveyor.train, name) is not None


def test_train_error_is_a_conveyor_error():
    from conveyor import ConveyorError

    assert issubclass(conveyor.train.TrainError, ConveyorError)
    assert issubclass(conveyor.train.MissingTorchError, ImportError)
