"""Does it learn? A learning-efficacy benchmark of the online loop with simulated users (issue 5).

    python -m bench.learning [--model smollm2-135m-instruct] [--preferences max_words,yes_no_only,...]
        [--variants default,paper,contrastive,topk,offline_template] [--population feedback,control,mixed]
        [--split dev|test] [--gate none|rules|learned|ensemble] [--seeds 0,1,2] [--interactions N] [--eval-every K]
        [--out bench/results/learning] [section.field=value ...]
    python -m bench.learning.noise --split test --repeats 3      # noise floor of the evaluation
    python -m bench.learning.ceiling --split test                 # in-context ceiling (distillation efficiency)
    python -m bench.learning.report RESULT.json [...]            # tables from result files

Simulated users with a hidden, rule-checked preference (`preferences.py`) chat with the running service over HTTP
(`users.py`) on training prompts (`prompts.py`, facts in `facts.py`); what they send next depends on the population
(feedback, a matched control whose follow-ups are never about the reply, or mixed traffic). Before training and every
K interactions, `evaluate.py` measures, on the dev or test split (`scoring.py`): compliance with every preference
(a trained × measured matrix, so generic drift shows up as gains nobody asked for), yes/no correctness next to the
yes/no format, strict accuracy on >= 200 checkable prompts, and perplexity of a reference text. `run.py` drives the
runs and writes a JSON result and a PNG curve (`plot.py`); `report.py` prints the tables with the noise floor
(`noise.py`) and distillation efficiency (`ceiling.py`).

Defaults (a smoke-sized run): one run (`default` = the loop config's own loss, template and KL, max_words,
feedback users, seed 0, dev split), 60 interactions, evaluation every 20 on 20 open + 20 yes/no prompts × 4 samples
and 200 checkable prompts (max_tokens 48 / 24), SmolLM2-135M-Instruct on CPU with vLLM (about 7 minutes on 2 cores).
"""
