"""Reward-hacking alarms: say when the reward rises for the wrong reason (length, form, one answer for every
question, a learned reward the verifiable one contradicts, a policy lurching off its trend), and stop if asked.

signals.py: a step's figures from its episodes (hacking/* in metrics.jsonl); rules.py: the alarms, rules over the
run's series with thresholds in guard.alarms; watch.py: the trainer's side (print, log alarms/*, stop)."""
