"""mmfisher.models.tracing.input_shape_note: the hooks' warning when input_shape is far from the images trained on."""
import torch

from mmfisher.models.tracing import input_shape_note


def test_images_near_input_shape_give_no_note():
    # a keep-ratio resize to 1333x800 and the batch padding: within the slack
    batch = torch.zeros(2, 3, 800, 1216)
    assert input_shape_note((3, 800, 1333), batch, 'X') is None
    assert input_shape_note((3, 800, 1333), [torch.zeros(3, 800, 1067), torch.zeros(3, 750, 1333)], 'X') is None
    assert input_shape_note((3, 224, 224), {'not': 'images'}, 'X') is None
    assert input_shape_note((3, 224, 224), [], 'X') is None


def test_a_classifier_left_at_the_detection_default_is_named_with_the_fix():
    note = input_shape_note((3, 800, 1333), [torch.zeros(3, 224, 224)] * 4, 'FisherPruningHook')
    assert note == ('FisherPruningHook: input_shape=(3, 800, 1333) but the training batches hold 3x224x224 images: '
                    'the FLOPs and activation shares and the target are counted at input_shape, not at the size the '
                    'model runs at. Fix: set input_shape=(3, 224, 224) in the hook (the size it is deployed at)')
    assert 'input_shape=(1, 64, 64) in the hook' in input_shape_note((3, 64, 64), torch.zeros(8, 1, 64, 64), 'X')
    # the median image of a mixed list is named
    mixed = [torch.zeros(3, 128, 128), torch.zeros(3, 64, 64), torch.zeros(3, 96, 96)]
    assert 'hold 3x96x96 images' in input_shape_note((3, 512, 512), mixed, 'X')


def test_fisher_pruning_hook_warns_once_on_its_first_batch(tmp_path, monkeypatch):
    from _hook_helpers import toy_runner
    for name, shape, expect in (('same', (3, 12, 12), 0), ('far', (3, 48, 48), 1)):
        runner = toy_runner(str(tmp_path / name), dict(interval=2, target=0.6, input_shape=shape), max_iters=4)
        logged = []
        monkeypatch.setattr(runner.logger, 'warning', lambda msg, *a, **k: logged.append(msg))
        runner.train()
        notes = [m for m in logged if 'but the training batches hold' in m]
        assert len(notes) == expect, notes
    assert notes[0].startswith('FisherPruningHook: input_shape=(3, 48, 48) but the training batches hold 3x12x12')
