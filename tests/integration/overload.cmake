# Bounded under overload (queue limits answer 429, RSS bounded and flat at more than 10x
# the sustainable rate, driven by wrk) and no descriptor leak after 10 000 connections.
corral_python_test(overload 300 "integration;router;replica;python")
