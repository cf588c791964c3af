"""The fusion model: N_FI, backbones, the served graph, and bad model settings."""

from __future__ import annotations

import pytest
import torch

from skinscreen.trainer.model import (
    BACKBONES,
    LITE_STAGES,
    TEST_TIME_VIEWS,
    EfficientNetLite,
    ModelSpec,
    ScreeningEnsemble,
    build_backbone,
    build_model,
    load_checkpoint,
    n_image_features,
    save_checkpoint,
    symmetry_view,
)


@pytest.mark.parametrize(
    ("share", "expected"), [(0.1, 198), (0.2, 88), (0.3, 51), (0.4, 33), (0.5, 22)]
)
def test_n_image_features_follows_the_paper(share: float, expected: int) -> None:
    assert n_image_features(share) == expected


@pytest.mark.parametrize("share", [0.0, 1.0, -0.2, 1.5])
def test_clinical_share_outside_zero_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match=r"strictly between 0 and 1"):
        ModelSpec(clinical_share=share)


def test_unknown_backbone_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError,
        match="efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, resnet50, simple-cnn",
    ):
        ModelSpec(backbone="vgg16")
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("use_clinical", [True, False])
def test_screening_model_contract(backbone: str, use_clinical: bool) -> None:
    spec = ModelSpec(backbone=backbone, image_size=64, use_clinical=use_clinical)
    model = build_model(spec, pretrained=False).eval()
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    clinical = torch.rand(3, 22)
    with torch.inference_mode():
        probability = model(images, clinical)
        features = model.backbone(model.pixels_to_input(images))
        trunk_then_top = model.backbone.top(model.backbone.trunk(model.pixels_to_input(images)))
        fused = model.head.fuse(features, clinical)
    assert probability.shape == (3,)
    assert probability.dtype == torch.float32
    assert ((probability >= 0) & (probability <= 1)).all()
    torch.testing.assert_close(features, trunk_then_top)
    assert fused.shape == (3, spec.n_image_features + (22 if use_clinical else 0))


def test_image_only_model_ignores_clinical_values() -> None:
    model = build_model(
        ModelSpec(backbone="simple-cnn", image_size=64, use_clinical=False), pretrained=False
    ).eval()
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(
            model(images, torch.zeros(2, 22)), model(images, torch.ones(2, 22) * 50)
        )


@pytest.mark.parametrize("variant", list(LITE_STAGES))
def test_lite_imagenet_weights_load_completely(variant: str) -> None:
    pretrained = EfficientNetLite(variant)
    pretrained.load_imagenet_weights()  # strict: every tensor of the checkpoint has a home
    fresh = EfficientNetLite(variant)
    assert not torch.equal(pretrained._conv_stem.weight, fresh._conv_stem.weight)
    # The checkpoint's batch-norm statistics are real ImageNet ones, not defaults.
    running_var = pretrained._bn1.running_var
    assert running_var is not None
    assert not torch.allclose(running_var, torch.ones(1280))


@pytest.mark.parametrize(
    ("variant", "size", "channels"),
    [
        ("efficientnet-lite0", 224, 320),
        ("efficientnet-lite1", 240, 320),
        ("efficientnet-lite2", 260, 352),
    ],
)
def test_same_padding_keeps_tensorflow_geometry(variant: str, size: int, channels: int) -> None:
    model = EfficientNetLite(variant).eval()
    with torch.inference_mode():
        trunk = model.trunk(torch.zeros(1, 3, size, size))
    # TF "SAME": ceil(S / 32) on every side, whatever the size.
    assert trunk.shape == (1, channels, -(-size // 32), -(-size // 32))


def test_ensemble_is_the_mean_of_its_members_and_shares_the_trunk() -> None:
    spec = ModelSpec(image_size=64)
    torch.manual_seed(0)
    members = [build_model(spec, pretrained=False).eval() for _ in range(3)]
    for member in members[1:]:  # cached mode: one frozen backbone, heads of their own
        member.backbone.load_state_dict(members[0].backbone.state_dict())
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    clinical = torch.rand(4, 22) * 50
    with torch.inference_mode():
        each = torch.stack([member(images, clinical) for member in members])
        classes = torch.stack(
            [torch.softmax(member.logits(images, clinical), dim=1) for member in members]
        )
        shared = ScreeningEnsemble(members, shared_trunk=True).eval()(images, clinical)
        separate = ScreeningEnsemble(members, shared_trunk=False).eval()(images, clinical)
    for cancer, diagnoses in (shared, separate):
        torch.testing.assert_close(cancer, each.mean(dim=0))
        torch.testing.assert_close(diagnoses, classes.mean(dim=0))
        # cancer = BCC + MEL + SCC, in the order ACK, BCC, MEL, NEV, SCC, SEK.
        torch.testing.assert_close(cancer, diagnoses[:, [1, 2, 4]].sum(dim=1))
        torch.testing.assert_close(diagnoses.sum(dim=1), torch.ones(4))
    assert not torch.allclose(each[0], each[1])  # the members really differ


def test_ensemble_outputs_follow_the_target() -> None:
    diagnosis = ScreeningEnsemble([build_model(ModelSpec(image_size=64), pretrained=False)], True)
    cancer = ScreeningEnsemble(
        [build_model(ModelSpec(image_size=64, target="cancer"), pretrained=False)], True
    )
    assert diagnosis.output_names == ("cancer_probability", "diagnosis_probabilities")
    assert cancer.output_names == ("cancer_probability",)
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        assert [tuple(output.shape) for output in diagnosis.eval()(images, torch.rand(2, 22))] == [
            (2,),
            (2, 6),
        ]
        assert [tuple(output.shape) for output in cancer.eval()(images, torch.rand(2, 22))] == [
            (2,)
        ]


def test_checkpoint_describes_itself(tmp_path) -> None:
    spec = ModelSpec(backbone="simple-cnn", image_size=64, clinical_share=0.5)
    member = build_model(spec, pretrained=False).eval()
    member.head.set_clinical_statistics(torch.rand(10, 22) * 80)
    model = ScreeningEnsemble([member], shared_trunk=False)
    save_checkpoint(model, tmp_path / "checkpoint.pt", extra={"threshold": 0.3})
    loaded, extra = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded.spec == spec
    assert extra == {"threshold": 0.3}
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    clinical = torch.rand(2, 22)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images, clinical), model(images, clinical))


def test_test_time_views_are_the_square_symmetries_and_average_the_probabilities() -> None:
    image = torch.arange(2 * 4 * 4 * 3, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = [symmetry_view(image, index, 2, 3) for index in range(len(TEST_TIME_VIEWS))]
    # Eight distinct views of an asymmetric image, each a permutation of its pixels.
    assert len({view.numpy().tobytes() for view in views}) == 8
    for view in views:
        assert torch.equal(view.sort(dim=-1)[0].sum(), image.sort(dim=-1)[0].sum())
    # NHWC photos take the same views as NCHW tensors.
    photos = image.permute(0, 2, 3, 1)
    for index in range(8):
        torch.testing.assert_close(
            symmetry_view(photos, index, 1, 2), views[index].permute(0, 2, 3, 1)
        )

    torch.manual_seed(0)
    spec = ModelSpec(image_size=64, test_time_views=4)
    members = [build_model(spec, pretrained=False).eval() for _ in range(2)]
    for member in members[1:]:
        member.backbone.load_state_dict(members[0].backbone.state_dict())
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    clinical = torch.rand(3, 22) * 50
    with torch.inference_mode():
        expected = torch.stack(
            [
                torch.softmax(member.logits(symmetry_view(images, index, 1, 2), clinical), dim=1)
                for member in members
                for index in range(4)
            ]
        ).mean(dim=0)
        for shared in (True, False):
            cancer, diagnoses = ScreeningEnsemble(members, shared_trunk=shared).eval()(
                images, clinical
            )
            torch.testing.assert_close(diagnoses, expected)
            torch.testing.assert_close(cancer, expected[:, [1, 2, 4]].sum(dim=1))
    with pytest.raises(ValueError, match="test_time_views must lie between 1 and 8, got 9"):
        ModelSpec(test_time_views=9)
