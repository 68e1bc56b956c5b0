"""Speech networks: the front end inside the model, SpecAugment, shapes for any length and rate."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from ml import ARCHITECTURES, DEFAULT_ARCH, architectures_for, build_audio_model, build_model
from ml.audio import MEL
from ml.nets import FLOOR_DB, AudioClassifier, SpecAugment, build_audio_frontend, feature_settings

AUDIO_ARCHS = architectures_for("audio")


def make(arch, *, num_classes=5, sample_rate=16_000, clip_samples=16_000, mean=None, std=None, **arch_args):
    rows = build_audio_frontend(arch, sample_rate=sample_rate, **arch_args).num_features
    return build_audio_model(
        arch, num_classes=num_classes, sample_rate=sample_rate, clip_samples=clip_samples,
        mean=mean if mean is not None else [-5.0] * rows, std=std if std is not None else [3.0] * rows, **arch_args,
    )


def waves(n, length, seed=0):
    return (torch.rand(n, length, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 0.5


def test_each_modality_has_its_architectures_and_a_default_among_them():
    assert AUDIO_ARCHS == ["seed_lstm", "cnn_mel", "crnn"]
    assert architectures_for("image") == ["seed_cnn", "resnet"]
    assert DEFAULT_ARCH["image"] in architectures_for("image")
    assert DEFAULT_ARCH["audio"] in AUDIO_ARCHS
    assert all(ARCHITECTURES[a].modality == "audio" and ARCHITECTURES[a].help for a in AUDIO_ARCHS)
    with pytest.raises(ValueError, match="Unknown modality 'video'"):
        architectures_for("video")


@pytest.mark.parametrize("arch", AUDIO_ARCHS)
@pytest.mark.parametrize("sample_rate", [8_000, 16_000, 22_050])
@pytest.mark.parametrize("seconds", [1 / 16_000, 0.02, 0.3, 1.0, 1.7])
def test_every_speech_arch_maps_waves_of_any_length_and_rate_to_logits(arch, sample_rate, seconds):
    length = max(1, round(seconds * sample_rate))
    model = make(arch, sample_rate=sample_rate, clip_samples=sample_rate).eval()
    x = waves(2, length)
    with torch.no_grad():
        feats = model.frontend(x)
        logits = model(x)
    rows = 20 if arch == "seed_lstm" else MEL["n_mels"]
    # center=True: one frame per hop plus one; short clips are zero-padded to MIN_FRAMES frames.
    assert feats.shape == (2, rows, model.frontend.num_frames(length))
    assert feats.shape[2] == max(8, 1 + length // MEL["hop_length"])
    assert logits.shape == (2, 5) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_the_front_end_is_torchaudio_mel_spectrogram_plus_log_floor_and_normalisation():
    mean, std = list(np.linspace(-8, 2, 40)), list(np.linspace(1, 4, 40))
    model = make("cnn_mel", mean=mean, std=std).eval()
    x = waves(3, 16_000, seed=1)
    x[:, :4_000] = 0  # digital silence: floored
    by_hand = torch.log(torchaudio.transforms.MelSpectrogram(sample_rate=16_000, **MEL)(x) + 1e-6)
    by_hand = torch.maximum(by_hand, by_hand.amax(dim=(1, 2), keepdim=True) - FLOOR_DB / 10 * math.log(10))
    by_hand = (by_hand - torch.tensor(mean).view(1, -1, 1)) / torch.tensor(std).view(1, -1, 1)
    with torch.no_grad():
        assert torch.allclose(model.features(x), by_hand.float(), atol=1e-5)


def test_seed_lstm_front_end_is_torchaudio_mfcc_on_log_mels():
    model = make("seed_lstm", mean=[0.0] * 20, std=[1.0] * 20).eval()
    x = waves(2, 12_000, seed=2)
    x[:, 6_000:] = 0  # digital silence: MFCCs have no floor
    by_hand = torchaudio.transforms.MFCC(sample_rate=16_000, n_mfcc=20, log_mels=True, melkwargs=MEL)(x)
    with torch.no_grad():
        assert torch.allclose(model.features(x), by_hand, atol=1e-4)
    assert "floor_db" not in model.frontend.settings


def test_silence_and_faint_noise_meet_at_a_floor_below_each_clips_own_peak():
    # FSDD's test clips are padded with digital silence; training adds faint noise. Below the
    # floor (FLOOR_DB under the clip's own peak) both are one value, whatever the clip's level.
    frontend = build_audio_frontend("crnn", sample_rate=16_000)
    t = torch.arange(16_000) / 16_000
    word = torch.where((t > 0.4) & (t < 0.6), 0.5 * torch.sin(2 * math.pi * 440 * t), torch.zeros(()))
    hiss = torch.randn(16_000, generator=torch.Generator().manual_seed(0)) * 0.5 * 10 ** (-80 / 20)
    x = torch.stack([word, word + hiss, word * 0.1, torch.zeros(16_000)])
    with torch.no_grad():
        feats = frontend(x)
    peak = feats.amax(dim=(1, 2))
    floor = peak - FLOOR_DB / 10 * math.log(10)
    assert torch.allclose(feats[:3].amin(dim=(1, 2)), floor[:3])
    silent = feats[:, :, :30]  # the first 300 ms: padding, or padding plus hiss
    assert (silent[0] == floor[0]).all() and (silent[1] == floor[1]).all()
    assert torch.allclose(peak[0], peak[1], atol=1e-3)
    # 20 dB quieter: the whole picture, floor included, moves down by log(100). (Not for any level:
    # log(power + 1e-6) is a fixed floor ~94 dB below a half-scale tone's peak.)
    assert torch.allclose(feats[2] - peak[2], feats[0] - peak[0], atol=0.05)
    assert (feats[3] == feats[3].amax()).all()  # all silence: one flat value


def test_int16_input_is_scaled_like_float_waves():
    model = make("cnn_mel").eval()
    x16 = (waves(2, 8_000, seed=3) * 32767).round().to(torch.int16)
    with torch.no_grad():
        assert torch.allclose(model(x16), model(x16.float() / 32768), atol=1e-6)


@pytest.mark.parametrize("arch", AUDIO_ARCHS)
def test_a_clip_is_scored_the_same_alone_or_in_a_batch(arch):
    # A per-clip front end: no batch-wide clamping (AmplitudeToDB's top_db would break this).
    model = make(arch).eval()
    x = waves(4, 16_000, seed=4)
    x[1] *= 0.01  # a much quieter neighbour
    with torch.no_grad():
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)


@pytest.mark.parametrize("arch", AUDIO_ARCHS)
@pytest.mark.parametrize("num_classes", [2, 10, 35])
def test_initial_loss_is_about_log_num_classes(arch, num_classes):
    torch.manual_seed(0)
    model = make(arch, num_classes=num_classes).train()
    x, y = waves(32, 16_000, seed=5), torch.randint(0, num_classes, (32,))
    loss = F.cross_entropy(model(x), y).item()
    assert abs(loss - math.log(num_classes)) < 0.1, loss


def test_specaugment_masks_only_in_training_mode_and_reproducibly():
    model = make("cnn_mel", freq_masks=2, freq_width=8, time_masks=2, time_width=20)
    x = waves(6, 16_000, seed=6)
    with torch.no_grad():
        clean = model.features(x)
        model.eval()
        assert torch.equal(model.specaugment(clean), clean)  # identity in eval mode

        model.train()

        def masked(seed):
            model.specaugment.generator = torch.Generator().manual_seed(seed)
            return model.specaugment(clean)

        a, b, c = masked(0), masked(0), masked(1)
    assert torch.equal(a, b)  # the same generator state gives the same masks
    assert not torch.equal(a, c)
    zeroed = (a == 0) & (clean != 0)
    assert zeroed.any()
    # Masks are whole bands and whole spans: every zeroed cell lies in a fully zeroed row or column.
    for i in range(len(x)):
        rows = (a[i] == 0).all(dim=1)
        cols = (a[i] == 0).all(dim=0)
        assert (zeroed[i] <= (rows[:, None] | cols[None, :])).all()
        assert rows.sum() <= 2 * 8 and cols.sum() <= 2 * 20
    unmasked = a != 0
    assert torch.equal(a[unmasked], clean[unmasked])


def test_specaugment_can_be_switched_off_and_is_not_saved():
    model = make("crnn").train()
    model.specaugment.enabled = False
    x = waves(2, 16_000, seed=7)
    with torch.no_grad():
        feats = model.features(x)
        assert torch.equal(model.specaugment(feats), feats)
    model.specaugment.generator = torch.Generator().manual_seed(0)
    assert not any(k.startswith("specaugment") for k in model.state_dict())


def test_specaugment_widths_never_mask_a_whole_axis():
    aug = SpecAugment(freq_masks=1, freq_width=100, time_masks=1, time_width=100).train()
    aug.generator = torch.Generator().manual_seed(0)
    x = torch.ones(50, 4, 3)
    out = aug(x)
    assert ((out != 0).sum(dim=(1, 2)) > 0).all()
    with pytest.raises(ValueError, match="time_width must be a whole number >= 0"):
        SpecAugment(time_width=-1)


def test_normalisation_and_front_end_settings_are_part_of_the_model():
    model = make("cnn_mel", mean=[1.0] * 40, std=[2.0] * 40)
    assert isinstance(model, AudioClassifier)
    state = model.state_dict()
    assert state["normalise.mean"].flatten().tolist() == [1.0] * 40
    assert state["normalise.std"].flatten().tolist() == [2.0] * 40
    assert model.frontend.settings == feature_settings(16_000)
    assert model.frontend.settings["floor_db"] == FLOOR_DB
    assert model.frontend.settings["f_max"] == 8000.0
    assert feature_settings(8_000)["f_max"] == 4000.0  # capped at Nyquist
    assert (model.arch, model.arch_args, model.sample_rate, model.clip_samples) == (
        "cnn_mel", ARCHITECTURES["cnn_mel"].defaults, 16_000, 16_000)


def test_arch_args_change_the_network():
    small, big = make("crnn", base_filters=8, hidden=32), make("crnn")
    assert small.arch_args["hidden"] == 32
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    assert make("seed_lstm", n_mfcc=13, mean=[0] * 13, std=[1] * 13).frontend.num_features == 13


def test_networks_of_the_other_modality_are_refused_in_plain_words():
    with pytest.raises(ValueError, match="seed_lstm is a speech network; this dataset holds images"):
        build_model("seed_lstm", num_classes=2, in_channels=1, height=8, width=8, mean=[0], std=[1])
    with pytest.raises(ValueError, match="resnet is an image network; this dataset holds speech"):
        build_audio_model("resnet", num_classes=2, sample_rate=16_000, clip_samples=16_000, mean=[0], std=[1])
    with pytest.raises(ValueError, match="Unknown architecture 'wav2vec'"):
        make("wav2vec")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="Unknown argument.*depth"):
        make("cnn_mel", depth=3)
    with pytest.raises(ValueError, match=r"one value per feature row \(40\)"):
        make("cnn_mel", mean=[0.0] * 3, std=[1.0] * 3)
    with pytest.raises(ValueError, match="std must be positive"):
        make("cnn_mel", std=[0.0] * 40)
