# Thin wrapper over CMakePresets.json. `make demo`, `make test`, `make test-sanitize`, `make docs`.
# `make demo` builds and runs examples/$(DEMO).cpp with $(DEMO_ARGS): by default the
# vanishing-gradient demo, writing its SVGs and CSVs to vanishing_out/
# (e.g. `make demo DEMO=fashion_mlp DEMO_ARGS=` for another example).
DEMO ?= vanishing_demo
DEMO_ARGS ?= --out vanishing_out
JOBS ?= 2
MAKEFLAGS += --no-print-directory

.PHONY: all deps demo test test-blas test-sanitize bench bench-ddp compare docs format clean

all: test

deps:
	@bash scripts/install-deps.sh

demo: deps
	cmake --preset release
	cmake --build --preset release -j$(JOBS) --target $(DEMO)
	build/release/examples/$(DEMO) $(DEMO_ARGS)

test: deps
	cmake --preset release
	cmake --build --preset release -j$(JOBS)
	ctest --preset release

# The same suite with TAPEGRAD_USE_BLAS=ON (Eigen's products in OpenBLAS).
test-blas: deps
	cmake --preset release-blas
	cmake --build --preset release-blas -j$(JOBS)
	ctest --preset release-blas

test-sanitize: deps
	cmake --preset sanitize
	cmake --build --preset sanitize -j$(JOBS)
	ctest --preset sanitize

bench: deps
	cmake --preset release
	cmake --build --preset release -j$(JOBS)
	@for b in build/release/benchmarks/bench_*; do \
	  case "$$b" in *bench_ddp) continue ;; esac; \
	  if [ -x "$$b" ]; then echo "== $$b"; "$$b" || exit 1; fi; \
	done

# Data-parallel training over MPI: 1 rank, 2 ranks, 1 process x 2 threads (benchmarks/ddp.sh).
bench-ddp: deps
	bash benchmarks/ddp.sh

# tapegrad against the LibTorch peer: table of ratios (benchmarks/compare.sh --help).
compare: deps
	bash benchmarks/compare.sh

# The API reference (Doxygen, docs/Doxyfile) in build/docs/html; any warning, e.g. an undocumented
# public name, fails it.
docs: deps
	@mkdir -p build/docs
	doxygen docs/Doxyfile

format:
	find include tests examples benchmarks docs \( -name '*.hpp' -o -name '*.cpp' \) -print0 \
	  | xargs -0 -r clang-format -i

clean:
	rm -rf build
