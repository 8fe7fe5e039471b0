"""Every input limit in one place: what paraphrx accepts, so memory and time stay bounded whatever a file holds.

Each is generous next to real data (the shipped samples: paraphrases ≤ 881 characters, answers ≤ 1,850, rows
≤ 440 KB of JSON, recipes ≈ 2 KB) and refused in one line naming the file, row and field (README "Input limits").
"""

# Source JSON files (`python -m prep`).
MAX_JSON_DEPTH = 32  # nesting of [ and {; a valid file nests 4 deep (list > row > paraphrases > paraphrase)
MAX_ROW_BYTES = 64 * 2**20  # one top-level row (an instruction with all its paraphrases) as JSON text
MAX_TEXT_CHARS = 16_384  # instruction_original, input, output, paraphrase, answer (≈ 4k Gemma tokens)
MAX_LABEL_CHARS = 256  # instruct_type

# Recipes (`train_sft.py`), evaluation configs (`--config`) and the recipe.yaml an adapter folder carries.
MAX_RECIPE_BYTES = 256 * 2**10
MAX_YAML_DEPTH = 16  # recipes are flat; a list or mapping value adds one or two levels

# Evaluation: the longest prompt answered (`--max_prompt_tokens`); a batch's memory grows with its square.
MAX_PROMPT_TOKENS = 2048
