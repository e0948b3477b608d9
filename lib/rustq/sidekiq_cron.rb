# frozen_string_literal: true

module Rustq
  # sidekiq-cron 2.x in an app that rustq-worker runs. Under `sidekiq` its poller is started by
  # Sidekiq's Launcher (which sidekiq-cron prepends itself to) and stopped when the process quiets;
  # rustq-worker runs no Launcher, so it starts the same poller once the app's :startup hooks have
  # run (sidekiq-cron loads `config/schedule.yml` in one) and stops it on quiet, as the Launcher
  # would. The schedules, their Redis keys and sidekiq-cron's Web UI tab are sidekiq-cron's own;
  # rustq-worker only keeps its poller turning, next to any Sidekiq processes' pollers.
  class SidekiqCron
    # Starts sidekiq-cron's poller when the app loaded sidekiq-cron (2.x, on Sidekiq 7+) and its
    # poll interval is positive; returns it (respond to #stop), or nil.
    def self.start(sidekiq_config, logger: Rustq.logger)
      return unless sidekiq_config && defined?(::Sidekiq::Cron::Poller) && ::Sidekiq::Cron.respond_to?(:configuration)

      interval = ::Sidekiq::Cron.configuration&.cron_poll_interval.to_i
      if interval <= 0
        logger.info { "sidekiq-cron is loaded with cron_poll_interval #{interval}: its poller is off, as under Sidekiq" }
        return
      end
      sidekiq_config[:cron_poll_interval] = interval
      poller = ::Sidekiq::Cron::Poller.new(sidekiq_config)
      poller.start
      logger.info { "sidekiq-cron is loaded: its poller runs in this process, every #{interval} s" }
      new(poller, logger)
    end

    def initialize(poller, logger)
      @poller = poller
      @logger = logger
    end

    # Stops the poller (waits for its thread): no schedule is enqueued by a quiet process.
    def stop
      @poller&.terminate
      @poller = nil
      @logger.info { "sidekiq-cron's poller stopped" }
    end
  end
end
