"""Alignment beyond a single loss: what runs around training (reward-model scoring,
best-of-n / rejection sampling, the RL loop, constitutional self-critique).

    from llm.align.reward_model import RewardModel
    from llm.align.best_of_n import best_of_n
    from llm.align.rl import train_rl              # PPO / GRPO on rollouts (rl.py)
    from llm.align.rewards import make_rewards     # arithmetic, format, model rewards

Losses themselves live in llm/train/losses/ (the registry); this package may import
llm.train, llm.data, llm.inference, llm.model and llm.checkpoint, never the reverse.
"""
