"""river's ``BiasedMF`` as a ranker: items ordered by the rating it predicts for the user."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import Interaction, Item, ModelLoadError, UserState
from ripplerec.models.catalog import IndexedModel, load_arrays, save_arrays

__all__ = ["BiasedMFConfig", "BiasedMFScorer"]


@dataclass(frozen=True)
class BiasedMFConfig:
    """river ``reco.BiasedMF`` hyper-parameters; ``default_value`` is the target of value-less events."""

    n_factors: int = 10
    bias_lr: float = 0.025
    latent_lr: float = 0.05
    l2_bias: float = 0.0
    l2_latent: float = 0.0
    init_sigma: float = 0.1
    default_value: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_factors < 1 or self.bias_lr <= 0 or self.latent_lr <= 0 or self.init_sigma < 0:
            raise ValueError("n_factors >= 1, learning rates > 0, init_sigma >= 0")


class BiasedMFScorer(IndexedModel):
    """Learns ratings one event at a time with river; ranks by ``b_i + p_u . q_i`` (the user terms are
    the same for every item). Items river has not seen yet score as bias 0, latent 0."""

    name = "biased-mf"

    def __init__(self, config: BiasedMFConfig | None = None) -> None:
        from river import optim, reco

        self.config = config or BiasedMFConfig()
        c = self.config
        self.model = reco.BiasedMF(
            n_factors=c.n_factors,
            bias_optimizer=optim.SGD(c.bias_lr),
            latent_optimizer=optim.SGD(c.latent_lr),
            l2_bias=c.l2_bias,
            l2_latent=c.l2_latent,
            weight_initializer=optim.initializers.Zeros(),
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=c.init_sigma, seed=c.seed),
            seed=c.seed,
        )
        super().__init__()
        self._matrix: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None

    def add_items(self, items: Sequence[Item]) -> None:
        if self._items.add(items):
            self._matrix = None

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        for event in interactions:
            value = self.config.default_value if event.value is None else float(event.value)
            self.model.learn_one(event.user_id, event.item_id, value)
            self._learned += 1
        self._matrix = None

    def _item_matrix(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        if self._matrix is None:
            n, k = len(self._items), self.config.n_factors
            biases = np.zeros(n, dtype=np.float32)
            latents = np.zeros((n, k), dtype=np.float32)
            i_biases, i_latents = self.model.i_biases, self.model.i_latents
            for row, item_id in enumerate(self._items.ids):
                if item_id in i_latents:  # read without touching river's defaultdicts
                    latents[row] = i_latents[item_id]
                if item_id in i_biases:
                    biases[row] = i_biases[item_id]
            self._matrix = (biases, latents)
        return self._matrix

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        biases, latents = self._item_matrix()
        zeros = np.zeros(self.config.n_factors, dtype=np.float32)
        u_latents = self.model.u_latents
        users_matrix = (
            np.stack(
                [np.asarray(u_latents[u.user_id], dtype=np.float32) if u.user_id in u_latents else zeros for u in users]
            )
            if users
            else np.zeros((0, self.config.n_factors), dtype=np.float32)
        )
        return (users_matrix @ latents.T + biases).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        m = self.model
        users = sorted(set(m.u_biases) | set(m.u_latents), key=str)
        items = sorted(set(m.i_biases) | set(m.i_latents), key=str)
        k = self.config.n_factors

        def table(keys: list[Any], values: Any, width: int | None) -> NDArray[np.float64]:
            if width is None:
                return np.asarray([float(values.get(key, 0.0)) for key in keys], dtype=np.float64)
            return np.asarray(
                [np.asarray(values[key]) if key in values else np.zeros(width) for key in keys], dtype=np.float64
            ).reshape(len(keys), width)

        save_arrays(
            directory,
            type(self).__name__,
            {
                "user_biases": table(users, m.u_biases, None),
                "user_latents": table(users, m.u_latents, k),
                "item_biases": table(items, m.i_biases, None),
                "item_latents": table(items, m.i_latents, k),
            },
            {
                "config": asdict(self.config),
                "item_ids": self._items.ids,
                "learned": self._learned,
                "users": users,
                "items": items,
                "global_mean": {"n": m.global_mean.n, "mean": m.global_mean.get()},
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> BiasedMFScorer:
        manifest, arrays = load_arrays(directory, cls.__name__)
        scorer = cls(BiasedMFConfig(**manifest["config"]))
        k = scorer.config.n_factors
        users, items = list(manifest["users"]), list(manifest["items"])
        expected = {
            "user_biases": (len(users),),
            "user_latents": (len(users), k),
            "item_biases": (len(items),),
            "item_latents": (len(items), k),
        }
        for name, shape in expected.items():
            if name not in arrays or arrays[name].shape != shape:
                found = arrays[name].shape if name in arrays else None
                raise ModelLoadError(f"{directory}: {name} has shape {found}, expected {shape}")
        m = scorer.model
        for i, user in enumerate(users):
            m.u_biases[user] = float(arrays["user_biases"][i])
            m.u_latents[user] = arrays["user_latents"][i].copy()
        for i, item in enumerate(items):
            m.i_biases[item] = float(arrays["item_biases"][i])
            m.i_latents[item] = arrays["item_latents"][i].copy()
        m.global_mean.n = float(manifest["global_mean"]["n"])
        m.global_mean._mean = float(manifest["global_mean"]["mean"])
        scorer._items.add([str(i) for i in manifest["item_ids"]])
        scorer._learned = int(manifest["learned"])
        return scorer
