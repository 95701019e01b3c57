"""Does it learn? A learning-efficacy benchmark of the online loop with simulated users (issue 5).

    python -m bench.learning [--model smollm2-135m-instruct] [--preferences max_words,all_lowercase,...]
        [--variants paper,contrastive,topk,offline_template] [--interactions N] [--eval-every K] [--seeds 0,1]
        [--control] [--out bench/results/learning] [section.field=value ...]

Simulated users with a hidden, rule-checked preference (`preferences.py`) chat with the running service over HTTP
(`users.py`) on generated training prompts (`prompts.py`); a violated preference gets a complaint as the next
message, which the service captures as implicit feedback and the loop trains on. Before training and every K
interactions, `evaluate.py` measures compliance with every preference on held-out prompts (a trained × measured
matrix, so generic drift shows up as gains nobody asked for), accuracy on checkable-answer prompts, and perplexity of
a reference text; a control run's users send only unrelated follow-ups. `run.py` drives the runs and writes a JSON
result and a PNG learning curve; `report.py` prints the before → after table.

Defaults: one run (offline_template = the system's default loss and template, max_words, seed 0), 60 interactions,
evaluation every 20 on 20 open + 10 yes/no held-out prompts × 4 samples and 48 checkable prompts, max_tokens 48,
SmolLM2-135M-Instruct on CPU with vLLM (about 6 minutes on 2 cores).
"""
