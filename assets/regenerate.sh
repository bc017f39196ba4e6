#!/usr/bin/env bash
# Regenerates the README's pictures and GIFs at the lessons' default settings, into assets/.
#   bash assets/regenerate.sh          the toy lessons' pictures (about 6 minutes on a 2-core CPU)
#   bash assets/regenerate.sh mnist    the MNIST ones, from the checkpoints that lessons 10, 11 and 13 wrote
#                                      into outputs/ (about 8 minutes: sampling only, no training)
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
if [ "${1:-}" = "mnist" ]; then
    python codes/mnist_UNet_video.py --checkpoint outputs/mnist_UNet/model.pt
    python codes/mnist_guidance_video.py --checkpoint outputs/mnist_guidance/model.pt
    python codes/mnist_reinjection.py --resume --assets assets
    exit
fi
for video in simple_1Diffusion simple_multimodal multimodal_DDPM spiral_DDPM flow_matching; do
    python "codes/${video}_video.py"
done
python codes/ddpm_coefficients.py
for lesson in simple_2Diffusion single_DDPM simple_DDPM multimodal_DDPM detailed_DDPM nonequilibrium_2015 \
              guidance_multimodal samplers; do
    python "codes/$lesson.py" --assets assets
done
