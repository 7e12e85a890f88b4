"""--occlude-queries: the clean result equals the ordinary evaluation, and the share of pixels
outside the occluder that differ from the clean query as the model receives it
(data.pipeline.eval_dataset), with the pipeline decoder (now) and with the former cv2 decoding.
Run: PYTHONPATH=. python benchmarks/occlude_queries_decoder.py (tiny dataset, a trivial embedder)."""
import tempfile, numpy as np, keras, cv2
from aaa_keras.data.synth import synthesize_market
from aaa_keras.data.layouts import load_dataset
from aaa_keras.evaluation import occluded
from aaa_keras.evaluation.run import extract_embeddings
from aaa_keras.data.pipeline import eval_dataset
root = synthesize_market(tempfile.mkdtemp() + "/d", num_ids=12, num_cams=3, seed=0)
ds = load_dataset(root)
x = keras.Input((128, 64, 3)); y = keras.layers.Flatten()(keras.layers.AveragePooling2D((16, 16))(x))
emb = keras.Model(x, y)
embed = lambda r: extract_embeddings(emb, r, (128, 64))
plain = occluded.evaluate_queries(embed, ds, root, ("euclidean",), False, {}, None, lambda m: None)
res = occluded.evaluate_queries(embed, ds, root, ("euclidean",), False, {}, 0, print)
print("clean == ordinary evaluation:", res["occlusion"]["clean"]["euclidean"] == plain["euclidean"])
# pixels outside the mask that differ, new path vs the old cv2 path
px = lambda paths: np.concatenate([b.numpy() for b in eval_dataset(paths, (128, 64))])
with tempfile.TemporaryDirectory() as d:
    w, _ = occluded.write_occluded_queries(ds.query, 0, d, root)
    c, o = px([r.path for r in ds.query]), px([r.path for r in w])
    new = []; old = []
    for i, r in enumerate(ds.query):
        occ = occluded.occlude_query_file(r.path, 0, root); m = occ.mask
        new.append(np.any(c[i] != o[i], axis=2)[~m].mean())
        legacy = occ.image.copy(); img = cv2.imread(r.path); legacy[~m] = img[~m]  # cv2-decoded outside the mask
        ok, buf = cv2.imencode(".png", legacy); open(d + "/legacy.png", "wb").write(buf.tobytes())
        old.append(np.any(px([d + "/legacy.png"])[0] != c[i], axis=2)[~m].mean())
print(f"{len(ds.query)} queries; share of pixels outside the occluder differing from the clean query as the model receives it: fixed {np.mean(new):.3f}, cv2 path {np.mean(old):.3f}")
