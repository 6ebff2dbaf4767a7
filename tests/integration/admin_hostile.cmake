# Hostile requests on corral-scheduler's admin API (tokens, apply bodies, framing,
# pipelining, idle connections), with the cluster serving throughout.
corral_python_test(admin_hostile 240 "integration;scheduler;python")
