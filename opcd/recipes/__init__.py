"""The jobs users run, each one evaluate -> train -> select -> report pipeline (`pipeline`): distill a system prompt
(`system_prompt`), consolidate experience (`consolidate`), and the demo (`demo`)."""
