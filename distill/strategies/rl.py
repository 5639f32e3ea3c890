"""``rl``: reinforced multi-teacher selection (Yuan et al., AAAI 2021, paper 001)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .. import losses
from ..errors import DistillError
from ..trainer import Optimization, adamw
from .base import register
from .hinton import KDSettings
from .weighted import WeightedKD


class RLSettings(KDSettings):
    """Settings of ``rl``: the KD settings, the policy's optimiser, episodes, reward sample and baseline."""

    policy_lr: float = Field(1e-2, gt=0, description="learning rate of the policy network (Adam)")
    episode_steps: int = Field(25, ge=1, description="student steps per episode; the policy is updated after each")
    reward_texts: int = Field(256, ge=8, description="held-out dev texts the reward is measured on (fixed sample)")
    baseline_momentum: float = Field(0.9, ge=0, lt=1, description="momentum of the moving-average reward baseline")
    init_prob: float = Field(0.8, gt=0, lt=1, description="initial selection probability of every teacher")


class SelectionPolicy(nn.Module):
    """Per-instance, per-teacher Bernoulli selection policy ``pi_k(s) = sigmoid(W s + b)_k`` (a logistic
    policy, as in Yuan et al.). Weights start at zero and the bias at ``logit(init_prob)``.

    Shapes: states (M, S) -> probabilities (M, N).
    """

    def __init__(self, state_dim: int, num_teachers: int, init_prob: float):
        super().__init__()
        self.linear = nn.Linear(state_dim, num_teachers)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, math.log(init_prob / (1 - init_prob)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(states))

    def log_prob(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``sum_k log pi(a_k | s)`` per instance: (M, S), (M, N) in {0, 1} -> (M,)."""
        logits = self.linear(states)
        return -F.binary_cross_entropy_with_logits(logits, actions.float(), reduction="none").sum(-1)


def reinforce_step(policy: SelectionPolicy, optimizer: torch.optim.Optimizer, states: torch.Tensor,
                   actions: torch.Tensor, advantage: float) -> float:
    """One REINFORCE update (Williams 1992): minimise ``-advantage * mean_m log pi(a_m | s_m)``, i.e. raise
    the log-probability of the episode's selections when the advantage is positive, lower it when
    negative. Returns the policy loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = -advantage * policy.log_prob(states, actions).mean()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@register("rl")
class ReinforcedSelection(WeightedKD):
    """Reinforced teacher selection: a policy picks, per training text, which teachers the student learns from.

    * **State** of a text (S = d_s + N C + N + C, all detached): the student's pooled feature,
      layer-normalised (no affine; the paper uses a separate encoder's [CLS] vector - we use the
      student's own, so no extra model runs); every teacher's soft labels at T = 1 (N C); every
      teacher's gold-label CE (N); the student's predicted probabilities (C).
    * **Action**: ``a_k ~ Bernoulli(pi_k(s))`` independently per teacher (:class:`SelectionPolicy`).
    * **Student**: learns from the selected teachers, ``w_k = a_k / max(1, sum_j a_j)``, in the shared
      loss ``(1 - alpha) CE(y, y_s) + alpha mean_b sum_k w_kb T^2 CE(softmax(z_k/T), softmax(z_s/T))``;
      a text with no teacher selected gets the task loss only.
    * **Reward**: per episode (``episode_steps`` student steps), the decrease of the student's mean CE on
      a fixed held-out sample of ``reward_texts`` dev texts over the episode (dev, never test;
      measured in eval mode). One reward per episode, shared by all its selections.
    * **REINFORCE** (:func:`reinforce_step`) with a variance-reducing baseline: the advantage is
      ``(R - b) / sigma`` where ``b`` is the exponential moving average of past rewards (momentum
      ``baseline_momentum``; the first episode sets it) and ``sigma`` the moving standard deviation
      (so the step size does not depend on the scale of CE changes). The policy has its own Adam
      (``policy_lr``), separate from the student's AdamW, and is saved with the run's checkpoints
      (with the episode buffer and baseline, so ``--resume`` continues exactly).

    Choices the paper (abstract only here) leaves open are the ones above; the CA-MKD/GLMKD
    implementations use a per-step reward from the training batch instead (GLMKD: ``-CE`` of the
    student, no baseline). The policy starts with every teacher selected with probability
    ``init_prob`` (0.8), so early training is close to average-ensemble KD. On transfer-set texts
    (no gold label) the state's gold-label CE uses the teacher ensemble's prediction as the label.
    """

    paper = "Yuan et al., 'Reinforced Multi-Teacher Selection for Knowledge Distillation', AAAI 2021 (paper 001)"
    Settings = RLSettings
    distributed = False  # the REINFORCE update runs outside the student's step: one process

    def __init__(self, settings, teachers, student):
        super().__init__(settings, teachers, student)
        n, c = len(teachers), student.num_labels
        self.state_dim = student.hidden_size + n * c + n + c
        self.policy = SelectionPolicy(self.state_dim, n, settings.init_prob)
        self.buffer_states: list[torch.Tensor] = []
        self.buffer_actions: list[torch.Tensor] = []
        self.baseline: float | None = None
        self.reward_var = 0.0
        self.prev_dev_ce: float | None = None
        self.rewards: list[float] = []
        self.epoch_rewards: list[float] = []
        self.epoch_policy_losses: list[float] = []
        self.epoch_probs: list[torch.Tensor] = []
        self.reward_rows: list[int] | None = None

    # -------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self, model, fs, total_steps) -> list[Optimization]:
        """The student's AdamW (encoder / head groups, without the policy) and the policy's Adam."""
        enc = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
        head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
        policy_opt = torch.optim.Adam(self.policy.parameters(), lr=self.settings.policy_lr)
        return [adamw([(enc, fs.lr), (head, fs.head_lr)], fs.weight_decay, total_steps, fs.warmup),
                Optimization(policy_opt, None, list(self.policy.parameters()))]

    def state(self, student, teachers, labels) -> torch.Tensor:
        """Per-text state (B, S) (see the class docstring), detached."""
        with torch.no_grad():
            pooled = F.layer_norm(student.pooled.float(), student.pooled.shape[-1:])
            soft = torch.softmax(teachers.logits.float(), -1)  # (N, B, C)
            ce = losses.teacher_gold_ce(teachers.logits, labels)  # (N, B)
            pred = torch.softmax(student.logits.float(), -1)
            return torch.cat([pooled, soft.permute(1, 0, 2).flatten(1), ce.T, pred], dim=1)

    def weights(self, student, teachers, batch):
        s = self.state(student, teachers, batch.labels)
        with torch.no_grad():
            probs = self.policy(s)
            a = torch.bernoulli(probs) if self.training else (probs > 0.5).float()
        if self.training:
            self.buffer_states.append(s.cpu())
            self.buffer_actions.append(a.cpu())
            self.epoch_probs.append(probs.mean(0).cpu())
        return (a / a.sum(1, keepdim=True).clamp_min(1.0)).T

    # ------------------------------------------------------------------------------------ episodes
    def _dev_ce(self, ctx) -> float:
        if ctx.evaluate is None or not ctx.evaluate.parts.get("dev"):
            raise DistillError("strategy rl needs held-out dev data for its reward (the dev part is empty); "
                               "raise --dev-frac.")
        if self.reward_rows is None:
            dev = ctx.evaluate.parts["dev"]
            k = min(self.settings.reward_texts, len(dev))
            self.reward_rows = sorted(np.random.default_rng(ctx.settings.seed).choice(dev, k, replace=False).tolist())
        return ctx.evaluate("dev", self.reward_rows)["loss"]

    def training_step(self, batch, ctx):
        """The default step, plus the episode end (reward, REINFORCE) every ``episode_steps`` steps."""
        if self.prev_dev_ce is None:
            self.prev_dev_ce = self._dev_ce(ctx)
        out = super().training_step(batch, ctx)
        if (ctx.step + 1) % self.settings.episode_steps == 0:
            self.epoch_policy_losses.append(self.end_episode(ctx))
        return out

    def end_episode(self, ctx) -> float:
        """Reward the episode's selections: R = dev CE decrease; REINFORCE with the moving baseline."""
        ce = self._dev_ce(ctx)
        reward = self.prev_dev_ce - ce
        self.prev_dev_ce = ce
        m = self.settings.baseline_momentum
        if self.baseline is None:
            self.baseline = reward
        adv = (reward - self.baseline) / math.sqrt(self.reward_var + 1e-12) if self.reward_var > 0 else 0.0
        self.reward_var = m * self.reward_var + (1 - m) * (reward - self.baseline) ** 2
        self.baseline = m * self.baseline + (1 - m) * reward
        states = torch.cat(self.buffer_states).to(ctx.device)
        actions = torch.cat(self.buffer_actions).to(ctx.device)
        self.buffer_states, self.buffer_actions = [], []
        self.rewards.append(reward)
        self.epoch_rewards.append(reward)
        return reinforce_step(self.policy, ctx.optimizations[1].optimizer, states, actions, float(adv))

    def on_epoch_start(self, ctx):
        self.epoch_rewards, self.epoch_policy_losses, self.epoch_probs = [], [], []

    def on_epoch_end(self, ctx):
        """Logged with the epoch: episodes, mean reward and policy loss, and the mean selection
        probability of every teacher over the epoch's texts."""
        out = {"episodes": len(self.epoch_rewards),
               "reward_mean": float(np.mean(self.epoch_rewards)) if self.epoch_rewards else None,
               "policy_loss_mean": float(np.mean(self.epoch_policy_losses)) if self.epoch_policy_losses else None}
        if self.epoch_probs:
            for k, p in enumerate(torch.stack(self.epoch_probs).mean(0).tolist()):
                out[f"select_prob_teacher_{k}"] = p
        return out

    # ---------------------------------------------------------------------------- checkpointed state
    def get_extra_state(self):
        """Baseline, reward statistics and the open episode's buffer (checkpointed with the run)."""
        return {"baseline": self.baseline, "reward_var": self.reward_var, "prev_dev_ce": self.prev_dev_ce,
                "rewards": list(self.rewards), "reward_rows": self.reward_rows,
                "buffer_states": torch.cat(self.buffer_states) if self.buffer_states else None,
                "buffer_actions": torch.cat(self.buffer_actions) if self.buffer_actions else None}

    def set_extra_state(self, st):
        self.baseline, self.reward_var, self.prev_dev_ce = st["baseline"], st["reward_var"], st["prev_dev_ce"]
        self.rewards, self.reward_rows = list(st["rewards"]), st["reward_rows"]
        self.buffer_states = [st["buffer_states"]] if st["buffer_states"] is not None else []
        self.buffer_actions = [st["buffer_actions"]] if st["buffer_actions"] is not None else []

    def describe(self):
        s = self.settings
        return (f"reinforced teacher selection: Bernoulli policy per text and teacher, REINFORCE on the dev-CE "
                f"decrease per {s.episode_steps}-step episode (moving baseline); {1 - s.alpha:g}*L_s + "
                f"{s.alpha:g}*L_KD(selected teachers, T={s.temperature})")
