"""What people read: the `check` table and JSON, calculation walkthroughs, diagrams, and the
inspect and report pages. Imports anything below it; nothing imports it but the API and the CLI."""
