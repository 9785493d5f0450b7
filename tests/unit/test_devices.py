from train.yolo import device_for_trial


def test_parallel_trials_take_gpus_round_robin():
    assert [device_for_trial(k, 4) for k in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert device_for_trial(3, 1) == "0"


def test_without_gpus_trials_keep_yolov5s_auto_device():
    assert device_for_trial(5, 0) == ""
