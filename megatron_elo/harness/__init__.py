"""The offline evaluation harness: AlpacaEval-, MT-Bench- and Arena-Hard-style benchmarks judged by a local LLM."""
