"""Fidelity metrics for representation-conditional samples: pure tensor functions, no models, no IO.

Notation. x_1..x_N are reference images and f a frozen feature map (by default the conditioning encoder and
layer; optionally a separate "judge" encoder). h_i = f(x_i). The model draws K samples x̂_i1..x̂_iK from the
conditioning embedding of x_i, and ĥ_ik = f(x̂_ik). Sample tensors are input-major: row i*K + k is sample k of
image i. With a judge, h and ĥ are the judge's features of x and x̂, while sampling still conditions on the
model's own encoder.

1. Rank (Bordes et al. 2022, Sec. 4). rank_ik = 1 + #{j != i : d(ĥ_ik, h_j) < d(ĥ_ik, h_i)}, with d the cosine
   distance 1 - cos. Rank 1 means the sample is closer to its own source than to any other reference. The rank is
   computed for every one of the K samples and averaged over all N*K of them (equivalently: per-image mean over
   its K samples, then mean over images). Reported: mean rank, median rank, top-1 % (rank = 1) and top-5 %
   (rank <= 5). Chance is (N + 1) / 2.
2. FD: the Fréchet distance between Gaussians fitted to {ĥ} and {h} in the judge's feature space,
   ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017). It is biased upwards at small n,
   so it is reported beside a calibration FD between two disjoint halves of the real set (even and odd
   positions): the value a perfect sampler would reach at about that sample size.
3. Diversity, among the K samples of the same h: the mean pairwise pixel distance, measured as the per-pixel
   RMS difference sqrt(mean((a - b)^2)) over all 3*R*R values of images in [0, 1] (so it does not grow with the
   resolution, and 1 is the largest possible value), and the mean pairwise feature cosine distance. Undefined
   (None) for K = 1.
4. Class agreement: a weighted kNN classifier (k = 20, cosine similarity, votes weighted by exp(sim / 0.07);
   Wu et al. 2018) fitted on labelled training embeddings predicts a label for every sample; reported is the
   fraction of samples whose label equals the true label of their source x, beside the same classifier's
   accuracy on the real x (the ceiling).
5. Classifier: an independent supervised classifier (rcdm.judge, trained with labels, never conditioned on)
   labels every sample; reported are its accuracy on samples against their sources' labels beside its accuracy on
   the sources, and FD in its penultimate features (samples vs sources) beside FD between two real sets of the
   same size (`classifier_scores`).

Rank, FD and diversity compute in float64. Every function works on blocks of a fixed size, so its result does
not depend on how the caller batched the data that produced the features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_CHUNK = 1024  # query rows per similarity block: bounds memory at N x 1024 and never depends on the caller


def _groups(n_hat: int, n_ref: int) -> int:
    """K, the samples per reference, from the row counts of input-major sample tensors."""
    if n_ref == 0 or n_hat % n_ref:
        raise ValueError(f"{n_hat} samples cannot be split evenly over {n_ref} reference images")
    return n_hat // n_ref


def sample_ranks(h_ref: torch.Tensor, h_hat: torch.Tensor) -> torch.Tensor:
    """Rank of every sample's source among all references: h_ref (N, D), h_hat (N*K, D) -> long (N*K,).

    rank = 1 + #{j != i : cos(ĥ, h_j) > cos(ĥ, h_i)}; ties count in the sample's favour (strict inequality),
    and j = i never counts since cos(ĥ, h_i) is not greater than itself.
    """
    k = _groups(len(h_hat), len(h_ref))
    ref = F.normalize(h_ref.double(), dim=1)  # (N, D)
    hat = F.normalize(h_hat.double(), dim=1)  # (N*K, D)
    source = torch.arange(len(hat), device=hat.device) // k  # (N*K,)
    ranks = []
    for q, s in zip(hat.split(_CHUNK), source.split(_CHUNK)):
        sim = q @ ref.t()  # (b, N)
        own = sim.gather(1, s[:, None])  # (b, 1)
        ranks.append(1 + (sim > own).sum(1))
    return torch.cat(ranks)


def rank_stats(h_ref: torch.Tensor, h_hat: torch.Tensor) -> dict:
    """Mean and median rank, top-1 % and top-5 % over all N*K samples (definition 1 in the module docstring)."""
    r = sample_ranks(h_ref, h_hat).double()
    return {
        "mean": r.mean().item(),
        "median": r.quantile(0.5).item(),  # the midpoint average for even counts (torch.median takes the lower)
        "top1_pct": 100.0 * (r == 1).double().mean().item(),
        "top5_pct": 100.0 * (r <= 5).double().mean().item(),
        "chance_mean": (len(h_ref) + 1) / 2,
        "num_references": len(h_ref),
    }


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (n, D) and b (m, D), in float64.

    tr (S_a S_b)^(1/2) is computed as tr (S_a^(1/2) S_b S_a^(1/2))^(1/2): the two matrices are similar, and the
    second is symmetric positive semi-definite, so symmetric eigen-decompositions give it without the complex
    round-off that a general `sqrtm(S_a @ S_b)` produces for singular covariances (n < D).
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 vectors per set, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    cov_a, cov_b = _cov(a), _cov(b)  # (D, D)
    root_a = _psd_sqrt(cov_a)
    cross = root_a @ cov_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((cross + cross.t()) / 2).clamp_min(0).sqrt().sum()
    fd = (a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt
    return max(fd.item(), 0.0)  # exact zero can come out as -1e-13 in round-off


def _cov(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (n - 1), as np.cov and the reference FID code use: (n, D) -> (D, D)."""
    xc = x - x.mean(0)
    return xc.t() @ xc / (len(x) - 1)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric PSD matrix; round-off negative eigenvalues are clipped to 0."""
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.t()


def fd_stats(h_ref: torch.Tensor, h_hat: torch.Tensor) -> dict:
    """FD(samples, real) beside the calibration FD between the even and odd halves of the real set."""
    return {
        "samples_vs_real": frechet_distance(h_hat, h_ref),
        "real_half_vs_half": frechet_distance(h_ref[0::2], h_ref[1::2]) if len(h_ref) >= 4 else None,
        "num_samples": len(h_hat),
        "num_real": len(h_ref),
    }


def group_pixel_rms(samples: torch.Tensor, k: int) -> torch.Tensor:
    """Mean pairwise per-pixel RMS distance within each group of k samples: (N*K, 3, R, R) in [0, 1] -> (N,)."""
    x = samples.double().reshape(-1, k, samples[0].numel())  # (N, K, P)
    # Direct differences, not the |a|^2 + |b|^2 - 2ab expansion: near-identical samples must give ~0, not noise.
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / x.shape[-1] ** 0.5  # (N, K, K)
    return _mean_off_diagonal(d)


def group_cosine_spread(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Mean pairwise cosine distance within each group of k feature vectors: (N*K, D) -> (N,)."""
    z = F.normalize(feats.double(), dim=1).reshape(-1, k, feats.shape[1])  # (N, K, D)
    return _mean_off_diagonal(1 - z @ z.transpose(1, 2))


def _mean_off_diagonal(d: torch.Tensor) -> torch.Tensor:
    """(N, K, K) symmetric pairwise distances -> (N,) mean over the K(K-1) ordered pairs i != j."""
    k = d.shape[-1]
    return (d.sum((1, 2)) - d.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1))


def diversity(samples: torch.Tensor, feats: torch.Tensor, k: int) -> dict:
    """Definition 3: mean pairwise pixel RMS and feature cosine distance among the K samples of each h."""
    if k < 2:
        return {"pixel_rms": None, "feature_cosine": None}
    return {"pixel_rms": group_pixel_rms(samples, k).mean().item(),
            "feature_cosine": group_cosine_spread(feats, k).mean().item()}


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, query_feats: torch.Tensor, k: int = 20,
                t: float = 0.07, num_classes: int | None = None) -> torch.Tensor:
    """Weighted kNN labels (Wu et al. 2018): cosine similarity to the k nearest training embeddings, each vote
    weighted by exp(sim / t). (M, D) queries -> long (M,). k is capped at the number of training embeddings."""
    c = num_classes or int(train_labels.max()) + 1
    tr, q = F.normalize(train_feats.float(), dim=1), F.normalize(query_feats.float().to(train_feats.device), dim=1)
    labels = train_labels.to(tr.device)
    out = []
    for block in q.split(_CHUNK):
        sim, idx = (block @ tr.t()).topk(min(k, len(tr)), dim=1)  # (b, k)
        votes = torch.zeros(len(sim), c, device=tr.device).scatter_add_(1, labels[idx], (sim / t).exp())
        out.append(votes.argmax(1))
    return torch.cat(out)


def class_agreement(train_feats, train_labels, h_ref, h_hat, ref_labels, k: int = 20) -> dict:
    """Definition 4: kNN label of each sample vs the true label of its source, beside kNN accuracy on the real x."""
    reps = _groups(len(h_hat), len(h_ref))
    ref_labels = torch.as_tensor(ref_labels).to(train_labels.device)
    pred_hat = knn_predict(train_feats, train_labels, h_hat, k)
    pred_ref = knn_predict(train_feats, train_labels, h_ref, k)
    return {"samples": (pred_hat == ref_labels.repeat_interleave(reps)).double().mean().item(),
            "real": (pred_ref == ref_labels).double().mean().item(),
            "k": min(k, len(train_feats)), "num_train": len(train_feats)}


def classifier_scores(logits_hat, feats_hat, logits_ref, feats_ref, labels, feats_real=None) -> dict:
    """Definition 5, an independent classifier (rcdm.judge) that never saw the conditioning encoder.

    accuracy_samples: the fraction of samples (N*K, input-major) it labels as their source's true class;
    accuracy_sources: its accuracy on the N sources. fd: the Fréchet distance between its penultimate features of
    the samples and of their sources; fd_real: the same between another real set of the same size (`feats_real`,
    images disjoint from the sources) and the sources, i.e. where a perfect sampler would land. Per class: the same
    for the sources of each class (FD at n per class is biased upwards; compare classes with each other only)."""
    k = _groups(len(logits_hat), len(logits_ref))
    labels = torch.as_tensor(labels)
    hit_hat = (logits_hat.argmax(1) == labels.repeat_interleave(k)).double().view(-1, k).mean(1)  # (N,)
    hit_ref = (logits_ref.argmax(1) == labels).double()  # (N,)
    per_class = {}
    for c in labels.unique().tolist():
        mine = labels == c
        rows = mine.repeat_interleave(k)
        per_class[str(c)] = {"n": int(mine.sum()), "accuracy_samples": hit_hat[mine].mean().item(),
                             "accuracy_sources": hit_ref[mine].mean().item(),
                             "fd": frechet_distance(feats_hat[rows], feats_ref[mine]) if mine.sum() >= 2 else None}
    return {"accuracy_samples": hit_hat.mean().item(), "accuracy_sources": hit_ref.mean().item(),
            "fd": frechet_distance(feats_hat, feats_ref),
            "fd_real": frechet_distance(feats_real, feats_ref) if feats_real is not None and len(feats_real) >= 2
            else None,
            "n": len(labels), "num_samples": len(logits_hat),
            "num_real": len(feats_real) if feats_real is not None else 0, "per_class": per_class}
