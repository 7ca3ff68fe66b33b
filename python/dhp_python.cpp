// Thin bindings: check arguments, dispatch to the planner and simulator, convert errors.
// Descriptions cross as JSON text (docs/schemas.md); python/dhp/__init__.py adds dicts.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "dhp/error.hpp"
#include "dhp/io.hpp"
#include "dhp/plan_svg.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"

namespace py = pybind11;

namespace {

dhp::PlannerOptions make_options(const std::string& strategy, int llm_tp, int encoder_tp,
                                 const std::string& placement, int encoder_devices) {
  dhp::PlannerOptions options;
  options.strategy = dhp::strategy_from_string(strategy);
  options.llm_tp = llm_tp;
  options.encoder_tp = encoder_tp;
  if (placement == "colocated") {
    options.placement = dhp::EncoderPlacement::Colocated;
  } else if (placement == "disjoint") {
    options.placement = dhp::EncoderPlacement::Disjoint;
  } else {
    DHP_THROW(InvalidArgument, "placement='{}': expected 'colocated' or 'disjoint'", placement);
  }
  options.encoder_devices = encoder_devices;
  return options;
}

py::dict simulation_to_dict(const dhp::SimulationResult& r) {
  py::dict d;
  d["step_ms"] = r.step_ms;
  d["mean_idle_fraction"] = r.mean_idle_fraction;
  d["max_peak_mem_gib"] = r.max_peak_mem_gib;
  d["mem_capacity_gib"] = r.mem_capacity_gib;
  d["device_busy_ms"] = r.device_busy_ms;
  d["device_idle_fraction"] = r.device_idle_fraction;
  d["device_peak_mem_gib"] = r.device_peak_mem_gib;
  return d;
}

}  // namespace

PYBIND11_MODULE(_dhp, m) {
  m.doc() = "dhp: per-batch dynamic hybrid-parallelism planner (C++ core)";
  static py::exception<dhp::Error> error(m, "Error", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const dhp::Error& e) {
      error(e.what());
    }
  });

  m.def("cluster_preset_names", &dhp::cluster_preset_names);
  m.def("model_preset_names", &dhp::model_preset_names);
  m.def("strategy_names", [] {
    std::vector<std::string> names;
    for (auto s : dhp::all_strategies()) names.emplace_back(dhp::to_string(s));
    return names;
  });
  m.def(
      "cluster_json",
      [](const std::string& preset_or_path) {
        return dhp::to_json(dhp::load_cluster(preset_or_path));
      },
      py::arg("preset_or_path"));
  m.def(
      "model_json",
      [](const std::string& preset_or_path) {
        return dhp::to_json(dhp::load_model(preset_or_path));
      },
      py::arg("preset_or_path"));
  m.def(
      "cluster_from_json",
      [](const std::string& text) { return dhp::to_json(dhp::cluster_from_json(text)); },
      py::arg("text"), "Parses and validates a cluster JSON; returns it normalised.");
  m.def(
      "model_from_json",
      [](const std::string& text) { return dhp::to_json(dhp::model_from_json(text)); },
      py::arg("text"), "Parses and validates a model JSON; returns it normalised.");

  py::class_<dhp::Planner>(m, "Planner")
      .def(py::init([](const std::string& cluster_json, const std::string& model_json,
                       const std::string& strategy, int llm_tp, int encoder_tp,
                       const std::string& placement, int encoder_devices) {
             return dhp::Planner(
                 dhp::cluster_from_json(cluster_json), dhp::model_from_json(model_json),
                 make_options(strategy, llm_tp, encoder_tp, placement, encoder_devices));
           }),
           py::arg("cluster_json"), py::arg("model_json"), py::arg("strategy") = "dhp",
           py::arg("llm_tp") = 0, py::arg("encoder_tp") = 0, py::arg("placement") = "colocated",
           py::arg("encoder_devices") = 0)
      .def(
          "plan",
          [](const dhp::Planner& self, const std::string& batch_json) {
            const dhp::Batch batch = dhp::batch_from_json(batch_json);
            dhp::Plan plan;
            {
              py::gil_scoped_release release;  // planning is pure C++
              plan = self.plan(batch);
            }
            return dhp::to_json(plan, -1);
          },
          py::arg("batch_json"), "Plans one batch; returns the plan as JSON text.")
      .def(
          "simulate",
          [](const dhp::Planner& self, const std::string& batch_json,
             const std::string& plan_json) {
            const dhp::Batch batch = dhp::batch_from_json(batch_json);
            const dhp::Plan plan = dhp::plan_from_json(plan_json);
            dhp::validate(plan, batch);
            return simulation_to_dict(dhp::Simulator(self.cost_model()).run(plan, batch));
          },
          py::arg("batch_json"), py::arg("plan_json"))
      .def(
          "svg",
          [](const dhp::Planner& self, const std::string& batch_json,
             const std::string& plan_json) {
            const dhp::Batch batch = dhp::batch_from_json(batch_json);
            const dhp::Plan plan = dhp::plan_from_json(plan_json);
            dhp::validate(plan, batch);
            const auto result = dhp::Simulator(self.cost_model()).run(plan, batch, true);
            return dhp::plan_to_svg(plan, batch, result);
          },
          py::arg("batch_json"), py::arg("plan_json"));
}
