"""The on-disk formats, one module each: every read or write of a public file in the
store goes through here. `layout` names the stages, folders and files."""
