"""Sample quality for 28x28 grayscale: Fréchet distance, KID and an Inception-Score-style score.

The feature extractor is a small Fashion-MNIST CNN trained here with MindSpore
(fixed seed) on images [0, 4000) of the training file and cached. Images
[4000, 5000) are a real held-out set for calibration, and [5000, 7000) are the
reference set every sample set is compared with; the classifier never trains on
either, nor do the unconditional CPU recipes (``data.index_range: [0, 5000]``). Its accuracy is measured on
[5000, 7000).
"""
import fcntl
import hashlib
import os

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .data import load_fashion_arrays
from .layers import Conv2d
from .paths import cache_dir

TRAIN_RANGE, HELDOUT_RANGE, REFERENCE_RANGE = (0, 4000), (4000, 5000), (5000, 7000)
NUM_EVAL = 1000          # sample count every reported number uses
CLASSIFIER_VERSION = 1


class FashionClassifier(nn.Cell):
    """[B, 1, 28, 28] in [-1, 1] -> logits [B, 10]; ``features`` gives the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.SequentialCell([
            Conv2d(1, 32, 3, pad_mode="same", has_bias=True), nn.ReLU(), nn.MaxPool2d(2, 2),
            Conv2d(32, 64, 3, pad_mode="same", has_bias=True), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Dense(64 * 7 * 7, 128), nn.ReLU(),
        ])
        self.head = nn.Dense(128, 10)

    def features(self, x):
        return self.body(x)

    def construct(self, x):
        return self.head(self.body(x))


def _to_model_input(images_uint8):
    return images_uint8.astype(np.float32)[:, None] / 127.5 - 1.0


def real_images(root, span):
    """Real training images [N, 1, 28, 28] in [-1, 1] and labels [N] for an index span (start, stop)."""
    x, y = load_fashion_arrays(root, span[1])
    return _to_model_input(x[span[0]:]), y[span[0]:].astype(np.int32)


def _cache_path(root):
    with open(os.path.join(root, "train-labels-idx1-ubyte"), "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:12]
    return cache_dir(f"fashion_classifier_v{CLASSIFIER_VERSION}_{digest}.ckpt")


def train_classifier(root, epochs=4, batch_size=100, seed=0):
    """Train the feature CNN on images TRAIN_RANGE with Adam; returns (net, held-out accuracy)."""
    ms.set_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = real_images(root, TRAIN_RANGE)
    net = FashionClassifier()
    opt = nn.Adam(net.trainable_params(), learning_rate=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def forward(a, b):
        return loss_fn(net(a), b)

    grad_fn = ms.value_and_grad(forward, None, opt.parameters)

    @ms.jit
    def step(a, b):
        loss, grads = grad_fn(a, b)
        opt(grads)
        return loss

    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            flip = rng.random(batch_size) < 0.5
            xb = np.where(flip[:, None, None, None], x[idx][..., ::-1], x[idx])
            step(Tensor(np.ascontiguousarray(xb)), Tensor(y[idx]))
    net.set_train(False)
    xr, yr = real_images(root, REFERENCE_RANGE)
    acc = float((predict_proba(net, xr).argmax(1) == yr).mean())
    return net, acc


def load_classifier(root, retrain=False):
    """The cached classifier for this dataset (trained once, then loaded); returns (net, accuracy)."""
    path = _cache_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # two processes at once: one trains, the other waits and loads
        net = FashionClassifier()
        if os.path.isfile(path) and not retrain:
            data = ms.load_checkpoint(path)
            ms.load_param_into_net(net, data)
            net.set_train(False)
            return net, float(data["accuracy"].asnumpy())
        net, acc = train_classifier(root)
        tmp = path + f".tmp-{os.getpid()}.ckpt"
        ms.save_checkpoint(net, tmp, append_dict={"accuracy": acc})
        os.replace(tmp, path)
        return net, acc


def _batched(fn, images, batch_size=250):
    return np.concatenate([fn(Tensor(np.ascontiguousarray(images[i:i + batch_size], np.float32))).asnumpy()
                           for i in range(0, len(images), batch_size)])


def features(net, images):
    """Penultimate features [N, 128] of images [N, 1, 28, 28] in [-1, 1]."""
    return _batched(net.features, images).astype(np.float64)


def predict_proba(net, images):
    """Class probabilities [N, 10]."""
    def proba(x):
        return ops.softmax(net(x), -1)
    return _batched(proba, images).astype(np.float64)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the trace term computed stably.

    Tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), a symmetric PSD matrix, via eigh.
    """
    w, v = np.linalg.eigh(sigma1)
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt1 @ sigma2 @ sqrt1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def gaussian_stats(feats):
    """(mean [D], covariance [D, D]) of features [N, D]."""
    return feats.mean(0), np.cov(feats, rowvar=False)


def kernel_inception_distance(f1, f2, num_subsets=10, subset_size=500, seed=0):
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets (Binkowski 2018)."""
    rng = np.random.default_rng(seed)
    d = f1.shape[1]
    m = min(subset_size, len(f1), len(f2))
    out = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2 * kxy.mean())
        out.append(mmd)
    return float(np.mean(out))


def inception_score(probs, eps=1e-12):
    """exp(E_x KL(p(y|x) || p(y))): 1 for uninformative predictions, up to 10 for confident, diverse ones."""
    py = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + eps) - np.log(py + eps))).sum(1)
    return float(np.exp(kl.mean()))


def per_class_agreement(pred, labels, num_classes=10):
    """Fraction of predictions equal to the label, per class: pred, labels [N] int -> [num_classes] (None if absent)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    return [float((pred[labels == k] == k).mean()) if (labels == k).any() else None for k in range(num_classes)]


class Evaluator:
    """Scores sample sets against the fixed real reference set with the cached classifier.

    ``class_accuracy`` [10]: the classifier's per-class accuracy on the real reference images, the
    ceiling for the per-class label agreement of generated images.
    """

    def __init__(self, root, retrain=False):
        self.net, self.accuracy = load_classifier(root, retrain)
        ref, ref_labels = real_images(root, REFERENCE_RANGE)
        self.ref_feats = features(self.net, ref)
        self.ref_stats = gaussian_stats(self.ref_feats)
        self.class_accuracy = per_class_agreement(predict_proba(self.net, ref).argmax(1), ref_labels)

    def evaluate(self, images, num=NUM_EVAL, labels=None):
        """JSON-ready scores for the first ``num`` images [N, 1, 28, 28] in [-1, 1].

        With the requested ``labels`` [N] of class-conditional samples, ``label_agreement`` is the
        fraction the classifier assigns to the requested class (compare with ``classifier_accuracy``),
        and ``label_agreement_per_class`` the same per class (compare with ``classifier_accuracy_per_class``).
        """
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected images of shape [N, 1, 28, 28], got {list(images.shape)}")
        if len(images) < num:
            raise ValueError(f"need at least {num} images for comparable numbers, got {len(images)}")
        images = np.clip(images[:num], -1.0, 1.0)
        feats = features(self.net, images)
        probs = predict_proba(self.net, images)
        pred = probs.argmax(1)
        hist = np.bincount(pred, minlength=10)
        wanted = None if labels is None else np.asarray(labels)[:num]
        agreement = {} if labels is None else {
            "label_agreement": float((pred == wanted).mean()),
            "label_agreement_per_class": per_class_agreement(pred, wanted),
            "classifier_accuracy_per_class": [round(a, 4) for a in self.class_accuracy]}
        return {
            "num_images": int(num),
            "fd": frechet_distance(*gaussian_stats(feats), *self.ref_stats),
            "kid": kernel_inception_distance(feats, self.ref_feats),
            "is": inception_score(probs),
            "class_histogram": [int(c) for c in hist],
            "classes_present": int((hist >= max(1, num // 100)).sum()),
            "classifier_accuracy": round(self.accuracy, 4),
            "reference": f"Fashion-MNIST training images {REFERENCE_RANGE[0]}-{REFERENCE_RANGE[1] - 1}",
            **agreement,
        }


def calibration(evaluator, root):
    """Scores of reference points: real held-out, degraded real images, a few classes, noise."""
    real, labels = real_images(root, HELDOUT_RANGE)
    train, train_labels = real_images(root, TRAIN_RANGE)
    rng = np.random.default_rng(0)
    padded = np.pad(real, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    blurred = sum(padded[:, :, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9.0
    few = train[np.isin(train_labels, [0, 1, 2])][:NUM_EVAL]
    points = {
        "real held-out (floor)": real,
        "real, images 0-999 (what the CPU recipes train on)": train[:NUM_EVAL],
        "real + noise sigma 0.1": real + 0.1 * rng.standard_normal(real.shape),
        "real + noise sigma 0.3": real + 0.3 * rng.standard_normal(real.shape),
        "real, 3x3 box blur": blurred,
        "real, 3x3 box blur x3": _blur(_blur(blurred)),
        "real, only 3 classes": few,
        "gaussian noise": np.clip(rng.standard_normal(real.shape), -1, 1),
    }
    return {name: evaluator.evaluate(x.astype(np.float32)) for name, x in points.items()}


def _blur(x):
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    return sum(p[:, :, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9.0
