"""builtin:occluded: how its query/ and query_clean/ twins differ when decoded by the pipeline
(data.pipeline.decode_pixels): the share of pixels outside the occluder mask that differ, and
the differing pixels outside the 16x16 JPEG blocks the occluder touches (dilated by 1 px).
Run: PYTHONPATH=. python benchmarks/occluded_twins.py (small dataset, ~1 min)."""
import os, tempfile, numpy as np, tensorflow as tf
from aaa_keras.data import synth, occlusion_protocol
from aaa_keras.data.pipeline import decode_pixels
root = synth.synthesize_market(tempfile.mkdtemp()+"/o", num_ids=24, num_test_ids=10, num_cams=4, images_per_id_per_cam=2, occluded=True)
shots = [s for s in synth._plan(24, 4, 0, 2, 10, 5, 10, 1) if s.split == "query"]
cams = {c: synth._make_camera(0, c, (128*synth._SUPERSAMPLE, 64*synth._SUPERSAMPLE)) for c in range(1, 5)}
import dataclasses
cams = {c: dataclasses.replace(v, occluder_probability=0.0) for c, v in cams.items()}
looks = synth._identity_looks(0, list(range(1, 25)))
out_frac, ring = [], []
for s in shots:
    img = synth._render_shot(s, 0, looks, cams, (128, 64))
    mask = occlusion_protocol.occlude_shot(img, 0, s).mask
    q = decode_pixels(tf.io.read_file(os.path.join(root, "query", s.file_name))).numpy()
    c = decode_pixels(tf.io.read_file(os.path.join(root, "query_clean", s.file_name))).numpy()
    d = np.any(q != c, axis=2)
    out = d & ~mask
    # pixels outside the 16x16 JPEG blocks (MCUs) touched by the occluder, dilated by 1 px
    blocks = mask.reshape(8, 16, 4, 16).any(axis=(1, 3)).repeat(16, 0).repeat(16, 1)
    import cv2
    near = cv2.dilate(blocks.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    out_frac.append(out.sum() / (~mask).sum()); ring.append((d & ~near).sum())
print(len(shots), "queries; outside mask differing share mean %.3f max %.3f; outside touched blocks+1px differing pixels: %d" % (np.mean(out_frac), np.max(out_frac), sum(ring)))
