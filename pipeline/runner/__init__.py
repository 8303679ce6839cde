"""What every stage shares, owned once: the stage shape (`shape`), the ordered pipeline
(`pipeline`), running a stage (`run`: lock, skip/resume/force, success marker, effective config,
progress), the chunked runner of row stages (`chunks`), the LLM glue (`llm`) and the dry run
(`estimate`). Stages import from here; this package imports no stage."""
