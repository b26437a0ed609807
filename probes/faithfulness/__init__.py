"""Chain-of-thought faithfulness: behavioural tests, internal evidence, claim-by-claim checks and verdicts."""
