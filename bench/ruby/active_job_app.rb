# frozen_string_literal: true

# The ActiveJob no-op job both workers run, and a quiet ActiveJob.
require "active_job"
require "active_job/queue_adapters/sidekiq_adapter"
require "logger"

ActiveJob::Base.logger = Logger.new(nil)

class NoopActiveJob < ActiveJob::Base
  queue_as :default

  def perform(*); end
end
