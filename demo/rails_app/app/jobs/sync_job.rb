# frozen_string_literal: true

# Fails its first run; ActiveJob's retry_on runs it again a second later.
class SyncJob < ApplicationJob
  class Timeout < StandardError; end
  retry_on Timeout, wait: 1.second, attempts: 3

  def perform(account)
    record("account" => account)
    raise Timeout, "upstream timed out" if executions < 2
  end
end
