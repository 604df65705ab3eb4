"""What the notebooks run: profiles, live training views and the frozen-model analyses of notebooks 01/02."""
