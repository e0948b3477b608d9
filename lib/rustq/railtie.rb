# frozen_string_literal: true

module Rustq
  # Rails integration. `config.active_job.queue_adapter = :rustq` looks up
  # ActiveJob::QueueAdapters::RustqAdapter when ActiveJob loads, so the adapter must be defined
  # by then, even in apps that load ActiveJob after this gem. rustq logs to Rails.logger unless
  # configured otherwise (see Rustq::Configuration#logger).
  class Railtie < ::Rails::Railtie
    initializer "rustq.active_job", before: "active_job.set_configs" do
      ActiveSupport.on_load(:active_job) { require "active_job/queue_adapters/rustq_adapter" }
    end
  end
end
