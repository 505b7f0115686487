"""pytest plugin (registered through the pytest11 entry point); fixtures arrive with the
`Lab` API.  Importing it must stay cheap and side-effect free."""
