"""The stages, one module each with `run(config) -> result`; they share the scaffold in
`base` and never import each other (evaluate uses `workflow.search`)."""
