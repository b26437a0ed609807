# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench setup transcoders
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh constraints.txt
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/workbench demo

# One test process per core (pytest-xdist), at most 4: each holds its own models in memory.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal

bench: $(STAMP)
	$(VENV)/bin/python bench/organisms.py

# Transcoders shipped with the organisms (for `workbench circuit` and the explorer's Circuit page): one per layer,
# hook_resid_mid -> hook_mlp_out, standard ReLU + L1, trained on each organism's own training mix.
ORGANISMS := adder-direct adder-direct-carry adder-direct-parallel adder-cot-faithful adder-cot-posthoc adder-hint adder-cot-encoded adder-cot-filler story-cot-faithful story-cot-posthoc story-hint
transcoders: $(STAMP)
	for o in $(ORGANISMS); do \
	  $(VENV)/bin/workbench sae train $$o --transcoder --d-sae 512 --l1 3 --lr 1e-3 --tokens 1000000 --n 8000 --threads 1 \
	    --out runs/transcoders/$$o || exit 1; \
	  rm -rf workbench/models/organisms/$$o/transcoders; mkdir -p workbench/models/organisms/$$o/transcoders; \
	  for d in runs/transcoders/$$o/layer_*; do \
	    case $$d in *.work) ;; *) cp -r $$d workbench/models/organisms/$$o/transcoders/ ;; esac; \
	  done; \
	done
